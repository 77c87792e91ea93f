"""Gold-harvesting personas over HTTP: what several colluding accounts can learn, and a cheater
who uses it (the attack of issue 18, as a client of a *running* server's REST API).

- **Harvesters** work the job with throwaway accounts and keep everything that could identify
  an image again - the id the page gives it, the ETag of its image and the sha256 of its
  bytes - together with every accepted answer the missed-test-question feedback reveals.
  ``fail_quiz``: fail the quiz on purpose (answer every item opposite to the truth);
  ``miss_on_work``: pass the quiz, then answer work pages opposite to the truth, so every
  hidden test question is missed and its answer shown.
- The **cheater** passes the quiz, then on work pages answers any item it recognises (by id,
  ETag or bytes) with the harvested answer and every other item opposite to the truth: perfect
  on the gold it can spot, adversarial on the work.

The truth (content sha256 -> label) stands for what the attacker would otherwise have to guess;
giving it to them makes this the worst case. Loopback servers only, like ``http_driver``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from cxrlabel.sim.http_driver import check_loopback

MAX_PAGES = 200  # per account: a bound, not an expectation


@dataclass(frozen=True)
class SeenItem:
    image_id: str  # the id the page used for the image
    etag: str
    content_sha256: str

    def lookup_keys(self) -> tuple[str, str, str]:
        return (f"id:{self.image_id}", f"etag:{self.etag}", f"sha:{self.content_sha256}")


@dataclass
class AccountLog:
    """What one account saw and was told."""

    name: str
    items: list[SeenItem] = field(default_factory=list)
    revealed: dict[str, list[str]] = field(default_factory=dict)  # content sha -> answers
    pages: int = 0
    final_status: str | None = None
    recognised: list[SeenItem] = field(default_factory=list)  # cheater: items it "knew"

    def ids(self) -> set[str]:
        return {i.image_id for i in self.items}

    def etags(self) -> set[str]:
        return {i.etag for i in self.items}


@dataclass
class Harvest:
    """Everything the harvesters pooled: key (``id:``, ``etag:`` or ``sha:``) -> answers."""

    known: dict[str, list[str]] = field(default_factory=dict)
    logs: list[AccountLog] = field(default_factory=list)

    def add(self, log: AccountLog) -> None:
        self.logs.append(log)
        by_sha = {i.content_sha256: i for i in log.items}
        for sha, answers in log.revealed.items():
            item = by_sha.get(sha)
            keys = item.lookup_keys() if item is not None else (f"sha:{sha}",)
            for key in keys:
                self.known[key] = answers

    def lookup(self, item: SeenItem) -> list[str] | None:
        for key in item.lookup_keys():
            if key in self.known:
                return self.known[key]
        return None

    def revealed_shas(self) -> set[str]:
        return {sha for log in self.logs for sha in log.revealed}


def _opposite(label: str, labels: list[str]) -> str:
    others = [x for x in labels if x != label]
    return others[0] if others else label


class HttpAccount:
    """One annotator account driven over the REST API with a bearer token."""

    def __init__(
        self, base_url: str, job: str, name: str, token: str, timeout_s: float = 30.0
    ) -> None:
        check_loopback(base_url)
        self.job, self.log = job, AccountLog(name)
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self.client.close()

    def next_page(self) -> dict | None:
        body = self.client.get(f"/api/jobs/{self.job}/pages/next").json()
        return body.get("page")

    def fetch(self, item: dict) -> SeenItem:
        r = self.client.get(item["image_url"])
        r.raise_for_status()
        seen = SeenItem(
            item["image_public_id"],
            r.headers.get("etag", ""),
            hashlib.sha256(r.content).hexdigest(),
        )
        self.log.items.append(seen)
        return seen

    def submit(self, page: dict, answers: dict[str, str]) -> dict:
        r = self.client.post(
            f"/api/jobs/{self.job}/pages/{page['page_id']}/submit",
            json={
                "client_submission_id": page["client_submission_id"],
                "answers": [
                    {"image_public_id": pid, "answer": a, "certainty": "definitely"}
                    for pid, a in answers.items()
                ],
            },
        )
        r.raise_for_status()
        result = r.json()
        self.log.pages += 1
        self.log.final_status = result.get("annotator_status")
        return result

    def work(self, choose: Callable[[SeenItem, bool], str], max_pages: int = MAX_PAGES) -> None:
        """Pages until the account is stopped, gets no page or did ``max_pages``;
        ``choose(item, is_quiz)`` answers one item."""
        for _ in range(min(max_pages, MAX_PAGES)):
            page = self.next_page()
            if page is None:
                return
            seen = {item["image_public_id"]: self.fetch(item) for item in page["items"]}
            result = self.submit(
                page, {pid: choose(item, page["kind"] == "quiz") for pid, item in seen.items()}
            )
            for missed in result.get("missed_gold", []):
                item = seen.get(missed["image_public_id"])
                if item is not None:
                    self.log.revealed[item.content_sha256] = list(missed["accepted_answers"])
            if result.get("annotator_status") not in ("quiz", "active"):
                return


def harvest(
    accounts: list[HttpAccount],
    truth: dict[str, str],
    labels: list[str],
    strategy: str,
    max_pages: int = MAX_PAGES,
) -> Harvest:
    """Run the harvesting accounts one after another (each for at most ``max_pages``) and
    pool what they learned."""
    pooled = Harvest()
    for account in accounts:

        def choose(item: SeenItem, is_quiz: bool) -> str:
            label = truth[item.content_sha256]
            if strategy == "fail_quiz" or not is_quiz:
                return _opposite(label, labels)
            return label  # miss_on_work: get through the quiz honestly

        account.work(choose, max_pages)
        pooled.add(account.log)
    return pooled


def cheat(
    account: HttpAccount, pooled: Harvest, truth: dict[str, str], labels: list[str]
) -> AccountLog:
    """The cheater: honest on the quiz, harvested answers on what it recognises, the opposite
    of the truth on everything else."""

    def choose(item: SeenItem, is_quiz: bool) -> str:
        if is_quiz:
            return truth[item.content_sha256]
        known = pooled.lookup(item)
        if known is not None:
            account.log.recognised.append(item)
            return known[0]
        return _opposite(truth[item.content_sha256], labels)

    account.work(choose)
    return account.log
