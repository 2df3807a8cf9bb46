"""The ONNX Runtime ranker: padding, bucketing and truncation do not change scores."""

import numpy as np
import pytest

from ltr_sidecar.ranker import OnnxRanker, choose_providers
from tools.tiny_bundle import build_tiny_bundle


@pytest.fixture(scope="module")
def ranker(tiny_bundle):
    return OnnxRanker(tiny_bundle)


def test_a_prompt_scores_the_same_alone_and_in_a_batch_of_mixed_lengths(ranker):
    prompts = ["what is two plus two", "write an essay " * 20, "brief", "tell me a story about a dragon"]
    batched = ranker.score_texts(prompts)
    alone = np.array([ranker.score_texts([p])[0] for p in prompts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_known_words_move_the_score_as_the_bundle_defines(ranker):
    brief, neutral, essay = ranker.score_texts(["brief brief brief", "tell me a story", "essay essay essay"])
    assert brief > neutral > essay


def test_prompts_are_truncated_to_the_bundles_max_length(ranker):
    head = "brief " * ranker.max_length
    assert len(ranker.tokenize([head + "essay " * 500])[0]) == ranker.max_length
    assert ranker.score_texts([head + "essay " * 500])[0] == pytest.approx(ranker.score_texts([head])[0], abs=1e-6)


def test_cpu_is_chosen_when_no_gpu_provider_exists_and_unknown_providers_are_refused(ranker):
    assert ranker.provider in choose_providers()
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        choose_providers(["NoSuchExecutionProvider"])


def test_a_shorter_max_length_cuts_prompts_there_and_a_longer_one_is_refused(tiny_bundle, ranker):
    short = OnnxRanker(tiny_bundle, max_length=4)
    assert short.max_length == 4 and len(short.tokenize(["brief " * 50])[0]) == 4
    # Words beyond the cut no longer count: "essay" after 4 tokens leaves the score as it was.
    assert short.score_texts(["brief brief brief brief essay essay"])[0] == pytest.approx(short.score_texts(["brief brief brief brief"])[0], abs=1e-6)
    assert ranker.score_texts(["brief brief brief brief essay essay"])[0] < ranker.score_texts(["brief brief brief brief"])[0]
    with pytest.raises(ValueError, match="--max-length"):
        OnnxRanker(tiny_bundle, max_length=ranker.bundle.max_length + 1)


@pytest.fixture(scope="module")
def head_and_tail(tmp_path_factory):
    bundle = build_tiny_bundle(tmp_path_factory.mktemp("ht") / "tiny", word_bias={"brief": 5.0, "essay": -5.0}, max_length=8, head_tokens=3)
    return OnnxRanker(bundle)


def test_a_bundle_that_keeps_the_tail_reads_a_long_prompts_start_and_end_and_skips_its_middle(head_and_tail):
    r = head_and_tail
    middle = "tell me a story " * 40
    ids = r.tokenize(["brief essay " + middle + "brief brief brief brief essay"])[0]
    assert len(ids) == 8
    assert r.tokenizer.decode(ids) == r.tokenizer.decode(r.tokenize(["brief essay tell brief brief brief brief essay"])[0])
    # The end counts: its last words change the score; the middle does not.
    ends_brief, ends_essay = r.score_texts([middle + "brief " * 5, middle + "essay " * 5])
    assert ends_brief > ends_essay
    assert r.score_texts(["brief " + middle + "brief " * 5])[0] == pytest.approx(
        r.score_texts(["brief " + middle.replace("story", "dragon") + "brief " * 5])[0], abs=1e-6
    )
    # A short prompt is read whole, as without the tail.
    assert len(r.tokenize(["brief essay"])[0]) == 2


def test_caller_token_ids_are_cut_exactly_like_text(head_and_tail):
    r = head_and_tail
    text = "brief " + "tell me a story " * 40 + "essay essay"
    untruncated = r.tokenizer.encode(text).ids  # the caller's own tokenization: no cut
    assert len(untruncated) > r.max_length
    assert list(r.truncate([untruncated])[0]) == r.tokenize([text])[0]


def test_a_shorter_serving_max_length_keeps_the_head_and_shortens_the_tail(head_and_tail):
    shorter = OnnxRanker(head_and_tail.bundle, max_length=5)
    ids = shorter.tokenize(["essay brief essay " + "tell me " * 30 + "brief brief"])[0]
    assert shorter.tokenizer.decode(ids) == "essay brief essay brief brief"
    # At or below the head there is no tail left: the start only.
    assert OnnxRanker(head_and_tail.bundle, max_length=3).head_tokens == 0
