from ltr_sidecar.score_cache import ScoreCache, prompt_key


def test_lookup_by_prompt_and_by_request_id_hits_after_put():
    cache = ScoreCache(10)
    key = prompt_key("hello")
    cache.put("r1", key, 0.5)
    assert cache.get(key) == 0.5
    assert cache.get_by_id("r1") == 0.5
    assert cache.get_by_id("unknown") is None
    assert (cache.hits, cache.misses) == (2, 1)


def test_least_recently_used_entry_is_evicted_at_capacity():
    cache = ScoreCache(2)
    a, b, c = (prompt_key(x) for x in "abc")
    cache.put("a", a, 1.0)
    cache.put("b", b, 2.0)
    cache.get(a)  # a is now more recent than b
    cache.put("c", c, 3.0)
    assert cache.get(b) is None
    assert cache.get(a) == 1.0 and cache.get(c) == 3.0
    assert len(cache) == 2


def test_text_and_token_id_inputs_never_share_a_key():
    assert prompt_key("1,2") != prompt_key(token_ids=[1, 2])
    assert prompt_key(token_ids=[1, 2]) == prompt_key(token_ids=(1, 2))


def test_zero_capacity_disables_the_cache():
    cache = ScoreCache(0)
    cache.put("r", prompt_key("x"), 1.0)
    assert cache.get_by_id("r") is None


def test_an_id_whose_prompt_was_evicted_misses_and_counts_one_miss():
    cache = ScoreCache(2)
    x, y, z = (prompt_key(p) for p in "xyz")
    cache.put("x", x, 1.0)
    cache.put("y", y, 2.0)
    cache.get(x)  # y is now the least recently used score ...
    cache.put("z", z, 3.0)  # ... and is evicted, while the id index still names "y"
    hits, misses = cache.hits, cache.misses
    assert cache.get_by_id("y") is None
    assert (cache.hits, cache.misses) == (hits, misses + 1)
