"""The ONNX Runtime ranker: padding, bucketing and truncation do not change scores."""

import numpy as np
import pytest

from ltr_sidecar.ranker import OnnxRanker, choose_providers


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
