"""DICOM de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

How it is applied (see docs/deidentification.md for the full argument):

- cxrlabel never writes a DICOM file. A DICOM is only a carrier of pixels, so we keep a short
  *retain list* of pixel-describing attributes and remove everything else. That removes every
  attribute of Table E.1-1 with action X, and every private tag; attributes with action Z
  (PatientName, PatientID, ...) are present but empty; UIDs (action U) are replaced with fresh
  random UIDs. Dates, times, person names, institutions and free text never survive because they
  are not on the retain list, wherever they are nested.
- The result is verified by :func:`find_identifiers`, which walks the whole dataset (sequences
  included) and flags any Annex E attribute with a value, any private tag, any value of VR
  PN/DA/DT/TM, and any foreign UID. :func:`deidentify` refuses to return a dataset that fails.
- The PatientID is needed to keep one child's images in one split. It is turned into a
  pseudonym with a keyed hash (HMAC-SHA256 with a per-installation secret salt) before the
  dataset is dropped; the clear id is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

PROFILE_NAME = "PS3.15 Annex E Basic Application Level Confidentiality Profile"  # LO: 64 max
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
SALT_ENV = "CXRLABEL_PSEUDONYM_SALT"
SALT_FILE = Path("secrets") / "pseudonym-salt"

# Attributes that describe how to turn the stored values into an image, and nothing else.
RETAINED = frozenset(
    {
        "SOPClassUID",
        "Modality",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "NumberOfFrames",
        "RescaleIntercept",
        "RescaleSlope",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "PresentationLUTShape",
        "BurnedInAnnotation",
        "PixelData",
    }
)
# LUT sequences are kept, but only their numeric items (LUTExplanation is free text).
RETAINED_SEQUENCES = {
    "ModalityLUTSequence": frozenset({"LUTDescriptor", "LUTData", "ModalityLUTType"}),
    "VOILUTSequence": frozenset({"LUTDescriptor", "LUTData"}),
}
# Table E.1-1 attributes with action Z (Type 2 in their modules): kept, but empty.
ZERO_LENGTH = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Table E.1-1 attributes with action U that identify the instance: replaced by fresh UIDs.
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# UIDs that name a standard thing, not a patient or a study.
WELL_KNOWN_UIDS = frozenset(
    {
        "SOPClassUID",
        "TransferSyntaxUID",
        "MediaStorageSOPClassUID",
        "ImplementationClassUID",
        "CodingSchemeUID",
    }
)
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # scanned films, screenshots

# The identifying attributes of Table E.1-1 (by keyword), checked after de-identification.
# Not exhaustive on purpose: the VR rules in find_identifiers catch any other name, date or time.
ANNEX_E_ATTRIBUTES = frozenset(
    {
        "AccessionNumber",
        "AcquisitionComments",
        "AcquisitionContextSequence",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "AcquisitionDeviceProcessingDescription",
        "AcquisitionTime",
        "ActualHumanPerformersSequence",
        "AdditionalPatientHistory",
        "AdmissionID",
        "AdmittingDate",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "AdmittingTime",
        "Allergies",
        "AuthorObserverSequence",
        "BranchOfService",
        "CassetteID",
        "ContentCreatorName",
        "ContentDate",
        "ContentSequence",
        "ContentTime",
        "ContrastBolusAgent",
        "CountryOfResidence",
        "CurrentPatientLocation",
        "CustodialOrganizationSequence",
        "DataSetTrailingPadding",
        "DerivationDescription",
        "DetectorID",
        "DeviceSerialNumber",
        "DeviceUID",
        "DigitalSignaturesSequence",
        "DischargeDiagnosisDescription",
        "EthnicGroup",
        "FrameComments",
        "FrameOfReferenceUID",
        "GantryID",
        "GeneratorID",
        "GraphicAnnotationSequence",
        "HumanPerformerName",
        "HumanPerformerOrganization",
        "IconImageSequence",
        "IdentifyingComments",
        "ImageComments",
        "ImagePresentationComments",
        "ImagingServiceRequestComments",
        "Impressions",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "InstanceCreatorUID",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "InsurancePlanIdentification",
        "IrradiationEventUID",
        "IssuerOfAdmissionID",
        "IssuerOfPatientID",
        "LastMenstrualDate",
        "MedicalAlerts",
        "MedicalRecordLocator",
        "MilitaryRank",
        "ModifiedAttributesSequence",
        "ModifyingDeviceID",
        "NameOfPhysiciansReadingStudy",
        "NamesOfIntendedRecipientsOfResults",
        "Occupation",
        "OperatorIdentificationSequence",
        "OperatorsName",
        "OriginalAttributesSequence",
        "OrderCallbackPhoneNumber",
        "OrderEnteredBy",
        "OrderEntererLocation",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "ParticipantSequence",
        "PatientAddress",
        "PatientAge",
        "PatientBirthDate",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientID",
        "PatientInstitutionResidence",
        "PatientInsurancePlanCodeSequence",
        "PatientMotherBirthName",
        "PatientName",
        "PatientReligiousPreference",
        "PatientSex",
        "PatientSexNeutered",
        "PatientSize",
        "PatientState",
        "PatientTelephoneNumbers",
        "PatientTransportArrangements",
        "PatientWeight",
        "PerformedLocation",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformingPhysicianIdentificationSequence",
        "PerformingPhysicianName",
        "PersonAddress",
        "PersonName",
        "PersonTelephoneNumbers",
        "PhysicianApprovingInterpretation",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence",
        "PlateID",
        "PreMedication",
        "PregnancyStatus",
        "ProtocolName",
        "ReasonForTheImagingServiceRequest",
        "ReasonForStudy",
        "ReferencedImageSequence",
        "ReferencedPatientAliasSequence",
        "ReferencedPatientSequence",
        "ReferencedPerformedProcedureStepSequence",
        "ReferencedSOPInstanceUID",
        "ReferencedStudySequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianName",
        "ReferringPhysicianTelephoneNumbers",
        "RegionOfResidence",
        "RequestAttributesSequence",
        "RequestedContrastAgent",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestedProcedureLocation",
        "RequestingPhysician",
        "RequestingService",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "ResultsComments",
        "ReviewerName",
        "ScheduledHumanPerformersSequence",
        "ScheduledPatientInstitutionResidence",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepEndDate",
        "ScheduledProcedureStepStartDate",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "ScheduledStudyLocation",
        "SeriesDate",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesTime",
        "ServiceEpisodeID",
        "SmokingStatus",
        "SOPInstanceUID",
        "SourceImageSequence",
        "SpecialNeeds",
        "StationName",
        "StorageMediaFileSetUID",
        "StudyComments",
        "StudyDate",
        "StudyDescription",
        "StudyID",
        "StudyIDIssuer",
        "StudyInstanceUID",
        "StudyTime",
        "TextComments",
        "TextString",
        "TimezoneOffsetFromUTC",
        "TopicAuthor",
        "TopicKeywords",
        "TopicSubject",
        "TopicTitle",
        "UID",
        "VerifyingObserverName",
        "VerifyingObserverSequence",
        "VerifyingOrganization",
        "VisitComments",
    }
)
IDENTIFYING_VRS = frozenset({"PN", "DA", "DT", "TM"})


class DeidentificationError(Exception):
    """The de-identified dataset still holds an identifier (a bug: never store such data)."""


@dataclass(frozen=True)
class DeidResult:
    dataset: Dataset  # the clean copy; the only dataset code after deidentify() may use
    patient_pseudonym: str | None
    burned_in_annotation: bool  # "YES", or a secondary capture that does not say "NO"
    removed: int  # how many top-level attributes were dropped


def pseudonymise_patient_id(patient_id: str, salt: bytes) -> str:
    """A stable, non-reversible pseudonym: HMAC-SHA256 keyed with the installation's salt."""
    digest = hmac.new(salt, patient_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"dcm-{digest[:20]}"


def deidentify(ds: Dataset, salt: bytes | None) -> DeidResult:
    """A new dataset holding only what is needed to render the pixels, verified clean."""
    pseudonym = _pseudonym(ds, salt)
    burned_in = _burned_in(ds)
    clean = Dataset()
    for keyword in RETAINED:
        if keyword in ds:
            clean[keyword] = ds[keyword]
    for keyword, allowed in RETAINED_SEQUENCES.items():
        if keyword in ds and ds[keyword].VR == "SQ":
            setattr(clean, keyword, Sequence(_copy_items(ds[keyword].value, allowed)))
    for keyword in ZERO_LENGTH:
        setattr(clean, keyword, "")
    for keyword in REPLACED_UIDS:
        setattr(clean, keyword, generate_uid())
    clean.PatientIdentityRemoved = "YES"
    clean.DeidentificationMethod = PROFILE_NAME
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    clean.DeidentificationMethodCodeSequence = Sequence([code])
    clean.file_meta = _clean_file_meta(ds, clean)
    problems = find_identifiers(clean)
    if problems:
        raise DeidentificationError(f"identifiers left after de-identification: {problems}")
    return DeidResult(clean, pseudonym, burned_in, removed=len(ds) - len(RETAINED & set(ds.dir())))


def find_identifiers(ds: Dataset, path: str = "") -> list[str]:
    """Every identifying element left in ``ds`` (recursing into sequences): [] when clean."""
    found: list[str] = []
    for elem in ds:
        where = f"{path}{elem.keyword or elem.tag}"
        if elem.tag.is_private:
            found.append(f"{where} (private tag)")
            continue
        if elem.tag.group & 0xFF00 in (0x5000, 0x6000):  # curves and overlays (Annex E: X)
            found.append(f"{where} (curve/overlay)")
            continue
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                found.extend(find_identifiers(item, f"{where}[{i}]."))
            if elem.keyword in ANNEX_E_ATTRIBUTES and elem.value:
                found.append(f"{where} (Annex E sequence)")
            continue
        if elem.keyword == "PixelData" or _is_empty(elem.value):
            continue
        if elem.keyword in ANNEX_E_ATTRIBUTES and elem.keyword not in REPLACED_UIDS:
            found.append(f"{where} (Annex E attribute)")
        elif elem.VR in IDENTIFYING_VRS:
            found.append(f"{where} (VR {elem.VR})")
        elif (
            elem.VR == "UI"
            and elem.keyword not in WELL_KNOWN_UIDS
            and not str(elem.value).startswith(PYDICOM_ROOT_UID)
        ):
            found.append(f"{where} (foreign UID)")
    if path == "" and getattr(ds, "file_meta", None) is not None:
        found.extend(find_identifiers(ds.file_meta, "file_meta."))
    return found


def annex_e_tags() -> dict[str, int | None]:
    """Keyword -> tag for the Annex E list (None: not a DICOM keyword; a test checks that
    every keyword is real)."""
    return {k: tag_for_keyword(k) for k in sorted(ANNEX_E_ATTRIBUTES)}


def load_or_create_salt(data_dir: Path) -> bytes:
    """The installation's pseudonym key: env CXRLABEL_PSEUDONYM_SALT, else a 0600 file."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode("utf-8")
    path = data_dir / SALT_FILE
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(32).encode("ascii")
    # O_EXCL: two first runs racing must not end with two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


# --- helpers ------------------------------------------------------------------------------------


def _pseudonym(ds: Dataset, salt: bytes | None) -> str | None:
    try:
        value = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # a malformed PatientID is treated as absent
        return None
    return pseudonymise_patient_id(value, salt) if value and salt else None


def _burned_in(ds: Dataset) -> bool:
    try:
        flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
    except Exception:  # unreadable: assume the worst
        return True
    if flag:
        return flag != "NO"
    return sop_class.startswith(SECONDARY_CAPTURE_PREFIX)


def _copy_items(items: Sequence, allowed: frozenset[str]) -> list[Dataset]:
    copies = []
    for item in items:
        copy = Dataset()
        for keyword in allowed:
            if keyword in item:
                copy[keyword] = item[keyword]
        copies.append(copy)
    return copies


def _clean_file_meta(original: Dataset, clean: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    source = getattr(original, "file_meta", None)
    syntax = source.get("TransferSyntaxUID") if source is not None else None
    if syntax is not None:
        meta.TransferSyntaxUID = syntax
    if "SOPClassUID" in clean:
        meta.MediaStorageSOPClassUID = clean.SOPClassUID
    meta.MediaStorageSOPInstanceUID = clean.SOPInstanceUID
    return meta


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes):
        return len(value.strip()) == 0 if isinstance(value, str) else len(value) == 0
    try:
        return len(value) == 0  # type: ignore[arg-type]
    except TypeError:
        return False
