"""The annotator's status message and panel numbers (quality/annotator_status.py, pure)."""

from __future__ import annotations

from cxrlabel.quality.annotator_status import Standing, pages_left, standing_message
from cxrlabel.quality.review_summary import crowd_summary

STALE = "That page was submitted in 0 s ... After 2 more such page(s) you will be removed."


def test_removed_annotators_get_the_reason_of_their_removal_not_a_stale_warning():
    low = standing_message("removed", "low_trust: trust 0.41 < minimum 0.60", {}, STALE, 0.6)
    speed = standing_message("removed", "speed_trap: 3 pages faster than 8 s", {}, STALE, 0.6)
    admin = standing_message("removed", "admin: copied answers", {}, STALE, 0.6)
    assert "fell below the job's minimum of 60%" in low
    assert "faster than a careful look" in speed
    assert "copied answers" in admin
    assert all("more such page" not in m for m in (low, speed, admin))


def test_disqualified_gets_the_quiz_score_and_reinstated_is_welcomed_once():
    text = standing_message("disqualified", "quiz: 1 of 3", {}, STALE, 0.6, quiz=(1, 3))
    assert "did not pass the quiz" in text and "1 of 3" in text and "more such" not in text
    flags = {"reinstated": {"by_admin": True, "reason": "checked", "gold_seen": 4}}
    welcome = standing_message("active", None, flags, STALE, 0.6, quiz=(3, 4))
    assert "reinstated" in welcome and "checked" in welcome
    # After the next graded page the stored message (if any) is what is current.
    assert standing_message("active", None, flags, None, 0.6, quiz=(4, 5)) is None


def test_panel_numbers():
    s = Standing(
        gold_seen=5,
        gold_correct=3,
        min_accuracy=0.6,
        pages_done=4,
        pages_left=7,
        pay_per_page=0.25,
        currency="USD",
        min_seconds_per_page=8,
        speed_trips=1,
        speed_trap_limit=3,
    )
    assert s.accuracy == 0.6 and s.near_minimum and s.earnings == 1.0
    assert "at least 8 s" in s.pace_text() and "2 more" in s.pace_text()
    assert (
        pages_left(
            work_done=6, max_per_annotator=12, per_page_work=3, unseen_gold=10, gold_per_page=1
        )
        == 2
    )
    assert (
        pages_left(
            work_done=0, max_per_annotator=1000, per_page_work=3, unseen_gold=5, gold_per_page=1
        )
        == 5
    )


def test_crowd_summary_says_what_the_confidence_rests_on():
    weights = {"definitely": 1.0, "probably": 0.6, "cant_tell": 0.0}
    text = crowd_summary(
        "NORMAL", 1.0, {"NORMAL": {"probably": 1}, "PNEUMONIA": {"cant_tell": 2}}, weights
    )
    assert text == ("Leans NORMAL, confidence 1.00, from only 1 of 3 answers (2 could not tell).")
    assert "No leaning" in crowd_summary(None, None, {"NORMAL": {"cant_tell": 2}}, weights)


def test_removal_for_harm_shows_the_skill_reason_text():
    """Removal for harm (quality/skill.py) is explained in skill.REMOVAL_REASONS' words, not
    as if an administrator had removed the annotator."""
    from cxrlabel.quality import skill

    for code in skill.HARM_REASONS:
        text = standing_message(
            "removed", f"{code}: peer-implied accuracy 0.31 [0.2, 0.4]", {}, STALE, 0.6
        )
        assert text.startswith(skill.REMOVAL_REASONS[code])
        assert "An administrator removed you" not in text and "more such" not in text
