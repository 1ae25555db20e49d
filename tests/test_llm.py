"LLM clients against a live loopback server, the response cache's accounting, and batched local scoring (randsae.llm)."
import json, math, socket, time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

import randsae.llm as llm
from randsae.llm import (CachedClient, Completion, LLMClient, OpenAIClient, TransformersClient, VLLMClient, canned_openai_reply,
                         local_server, render_prompt)
from randsae.autointerp import prob_one

ask = lambda s: [{"role": "system", "content": "answer 0 or 1"}, {"role": "user", "content": s}]
TOP = {"1": math.log(0.6), " 1": math.log(0.1), "0": math.log(0.2), "x": math.log(0.05)}


def reply(path, req):
    last = req["messages"][-1]["content"]
    if last == "500": return 500, b'{"error": {"message": "overloaded"}}'
    if last == "404": return 404, b'{"error": "no such model"}'
    if last == "junk": return 200, b'{"choices": [ oops'
    if last == "list": return 200, b'[1, 2]'
    if last == "nologprobs": return 200, json.dumps({"choices": [{"message": {"content": "1"}}]}).encode()
    if last == "nullcontent": return 200, json.dumps({"choices": [{"message": {"content": None}}]}).encode()
    if last == "slow": time.sleep(2); return 200, json.dumps(canned_openai_reply("1")).encode()
    return 200, json.dumps(canned_openai_reply("1", TOP, prompt_tokens=7)).encode()


def closed_port() -> int:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port


@pytest.fixture(params=["httpx", "urllib"])
def transport(request, monkeypatch):
    if request.param == "urllib": monkeypatch.setattr(llm, "httpx", None)
    elif llm.httpx is None: pytest.skip("httpx not installed")
    return request.param


# ---------------------------------------------------------------- HTTP client against a live loopback server

def test_http_logprobs_and_generate(transport):
    with local_server(reply) as (url, reqs):
        c = OpenAIClient("canned", url, max_retries=0)
        lp = c.next_token_logprobs(ask("x"))
        assert set(lp) == {"0", "1"} and lp["1"] == pytest.approx(math.log(0.7)) and lp["0"] == pytest.approx(math.log(0.2))
        assert prob_one(lp) == pytest.approx(0.7 / 0.9)
        body = reqs[-1]["json"]
        assert reqs[-1]["path"] == "/v1/chat/completions"
        assert (body["model"], body["logprobs"], body["top_logprobs"], body["max_tokens"]) == ("canned", True, 20, 1)
        g = c.generate(ask("x"), max_new_tokens=5)
        assert (g.text, g.ok, g.prompt_tokens, g.completion_tokens) == ("1", True, 7, 1)
        assert reqs[-1]["json"]["max_tokens"] == 5 and "logprobs" not in reqs[-1]["json"]
        assert c.score_batch([ask("a"), ask("b")]) == [lp, lp]
        assert c.usage == {"prompt_tokens": 28, "completion_tokens": 4}


@pytest.mark.parametrize("prompt, exc, msg", [
    ("500", llm.HTTPStatusError, "answered HTTP 500"),
    ("404", llm.HTTPStatusError, "answered HTTP 404"),
    ("junk", ValueError, "malformed reply from"),
    ("list", ValueError, "expected a JSON object"),
    ("nologprobs", ValueError, "no field 'choices.0.logprobs.content.0'"),
])
def test_http_failures_raise_clearly(transport, prompt, exc, msg):
    with local_server(reply) as (url, _):
        c = OpenAIClient("canned", url, max_retries=0)
        with pytest.raises(exc, match=msg):
            (c.generate if prompt != "nologprobs" else c.next_token_logprobs)(ask(prompt))


def test_http_retries_5xx_not_4xx():
    with local_server(reply) as (url, reqs):
        c = OpenAIClient("canned", url, max_retries=2, backoff=0.01)
        with pytest.raises(llm.HTTPStatusError): c.generate(ask("500"))
        assert len(reqs) == 3
        with pytest.raises(llm.HTTPStatusError): c.generate(ask("404"))
        assert len(reqs) == 4


def test_http_unreachable_fails_fast_naming_url(transport):
    port = closed_port(); t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"http://127.0.0.1:{port}/v1/chat/completions"):
        OpenAIClient("m", f"http://127.0.0.1:{port}").generate(ask("x"))
    assert time.perf_counter() - t0 < 5


def test_http_timeout_is_bounded(transport):
    with local_server(reply) as (url, _):
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError, match=url):
            OpenAIClient("m", url, timeout=0.5, max_retries=0).generate(ask("slow"))
        assert time.perf_counter() - t0 < 1.9


def test_http_api_key_from_named_env_var(monkeypatch):
    with pytest.raises(ValueError, match="'RANDSAE_MISSING_KEY', which is not set"):
        OpenAIClient("m", api_key_env="RANDSAE_MISSING_KEY")
    monkeypatch.setenv("RANDSAE_K", "sk-123")
    with local_server(reply) as (url, reqs):
        OpenAIClient("m", url + "/v1/", api_key_env="RANDSAE_K").generate(ask("x"))
        OpenAIClient("m", url).generate(ask("x"))
        assert [r["authorization"] for r in reqs] == ["Bearer sk-123", None]
        assert reqs[0]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("kw, msg", [
    ({"model": ""}, "model must be a non-empty string"),
    ({"base_url": "127.0.0.1:8000"}, "base_url must start with http:// or https://"),
    ({"timeout": 0}, "timeout must be in (0"),
    ({"max_retries": -1}, "max_retries must be a non-negative int"),
])
def test_http_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")): OpenAIClient(**{"model": "m", **kw})


# ---------------------------------------------------------------- the cache around the HTTP client

def test_cache_counts_failures_and_survives_server_loss(tmp_path):
    with local_server(reply) as (url, reqs):
        cc = CachedClient(OpenAIClient("canned", url, max_retries=0), tmp_path, price_per_mtok=(2.0, 10.0))
        prompts = [ask("a"), ask("junk"), ask("b"), ask("500"), ask("nologprobs")]
        first = cc.score_batch(prompts)
        assert [bool(r) for r in first] == [True, False, True, False, False]
        g = cc.generate(ask("junk")); assert (g.ok, "malformed reply" in g.error) == (False, True)
        s = cc.stats()
        assert (s["hits"], s["misses"], s["failures"]) == (0, 6, 4) and s["failure_rate"] == pytest.approx(4 / 6)
        assert s["prompt_tokens"] == 14 and s["cost_usd"] == pytest.approx((14 * 2.0 + 2 * 10.0) / 1e6)
        n = len(reqs)
    # the server is gone: successes come from the cache, failures were not cached and now fail to connect
    again = cc.score_batch(prompts)
    assert again[0] == first[0] and again[2] == first[2] and again[1] == again[3] == {}
    assert cc.stats()["hits"] == 2 and any("cannot reach the LLM server" in e for e in cc.errors)
    assert len(list(tmp_path.rglob("*.json"))) == 2 and n == 6


def test_cache_key_covers_model_messages_method_params(tmp_path):
    k = llm.cache_key("m", ask("a"), "generate", {"t": 0})
    assert k != llm.cache_key("m2", ask("a"), "generate", {"t": 0}) != llm.cache_key("m", ask("b"), "generate", {"t": 0})
    assert k != llm.cache_key("m", ask("a"), "next_token_logprobs", {"t": 0}) and k != llm.cache_key("m", ask("a"), "generate", {"t": 1})
    assert len(k) == 64


def test_cache_bad_messages_are_failures(tmp_path):
    with local_server(reply) as (url, reqs):
        cc = CachedClient(OpenAIClient("m", url), tmp_path)
        assert cc.generate([{"role": "user"}]).ok is False and cc.next_token_logprobs("hello") == {}
        assert cc.stats()["failures"] == 2 and reqs == []


# ---------------------------------------------------------------- local transformers client

def tiny_tokenizer(template: bool):
    words = ["<pad>", "<eos>", "0", "1", "user", "system", "assistant", ":", "\n", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "?", "answer", "or"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(":", "isolated")])
    t = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    if template:
        t.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} \n {{ m['content'] }} </s> \n{% endfor %}"
                           "{% if add_generation_prompt %}<s> assistant \n{% endif %}")
    return t


def tiny_neox(seed=0):
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=256, pad_token_id=0, eos_token_id=1))


PROMPTS = [ask(" ".join(["the cat sat on the mat"] * k) + " ?") for k in (3, 1, 5, 2, 4, 1)]


@pytest.mark.filterwarnings("error::FutureWarning")   # transformers' deprecations would flood the interp notebook's output
@pytest.mark.parametrize("template", [False, True])
def test_transformers_batch_equals_one_at_a_time(template):
    tok = tiny_tokenizer(template); c = TransformersClient(tiny_neox(), tok, device="cpu", batch_size=4, name="tiny")
    text, templated = render_prompt(tok, PROMPTS[1])
    assert templated == template
    assert text.endswith("<s> assistant \n" if template else "\nassistant:")
    batched = c.score_batch(PROMPTS)
    assert len(batched) == len(PROMPTS)
    for p, b in zip(PROMPTS, batched):
        one = c.next_token_logprobs(p)
        assert set(b) == {"0", "1"} and all(b[k] <= 0 for k in b)
        for k in ("0", "1"): assert b[k] == pytest.approx(one[k], abs=1e-4)
    assert len({round(b["1"], 6) for b in batched}) > 1     # different prompts, different scores
    assert c.usage["prompt_tokens"] == 2 * sum(len(c.encode(p)) for p in PROMPTS)


def test_transformers_generate_and_protocol(tmp_path):
    c = TransformersClient(tiny_neox(), tiny_tokenizer(False), device="cpu", name="tiny")
    g = c.generate(PROMPTS[0], max_new_tokens=3)
    assert isinstance(g, Completion) and g.ok and g.completion_tokens == 3 and g.prompt_tokens == len(c.encode(PROMPTS[0]))
    assert c.generate(PROMPTS[0], max_new_tokens=3).text == g.text       # greedy is deterministic
    assert isinstance(c, LLMClient) and isinstance(CachedClient(c, tmp_path), LLMClient)
    with pytest.raises(ValueError, match="candidate 'dog' is not a single token"): c.score_batch(PROMPTS[:1], ("dog",))


def test_transformers_through_cache(tmp_path):
    c = TransformersClient(tiny_neox(), tiny_tokenizer(False), device="cpu", name="tiny")
    cc = CachedClient(c, tmp_path)
    first = cc.score_batch(PROMPTS); before = dict(c.usage)
    assert cc.score_batch(PROMPTS) == first and c.usage == before
    s = cc.stats(); assert (s["hits"], s["misses"], s["failures"]) == (6, 6, 0) and s["prompt_tokens"] == before["prompt_tokens"]


# ---------------------------------------------------------------- vLLM stub

def test_vllm_missing_gives_install_hint():
    import importlib.util
    if importlib.util.find_spec("vllm") is not None: pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match=r"pip install vllm \(GPU only"): VLLMClient()


def test_cache_batched_client_one_bad_prompt_does_not_sink_batch(tmp_path):
    class Batched:
        model, batched = "b", True
        def __init__(self): self.batches = 0
        def generate(self, messages, *, max_new_tokens=256, temperature=0.0): return Completion("x")
        def next_token_logprobs(self, messages, candidates=("0", "1"), top_logprobs=20):
            if messages[-1]["content"] == "bad": raise RuntimeError("bad prompt")
            return {"0": -1.0, "1": -0.5}
        def score_batch(self, batch, candidates=("0", "1"), top_logprobs=20):
            self.batches += 1; return [self.next_token_logprobs(m, candidates) for m in batch]
    cl = Batched(); cc = CachedClient(cl, tmp_path)
    out = cc.score_batch([ask("a"), ask("bad"), ask("c")])
    assert out == [{"0": -1.0, "1": -0.5}, {}, {"0": -1.0, "1": -0.5}] and cl.batches == 1
    assert cc.stats()["failures"] == 1 and cc.errors == ["RuntimeError: bad prompt"]


def test_explain_and_score_through_a_live_server(tmp_path):
    "llm_explanations and llm_scores over HTTP: probabilities from the server's logprobs, a junk reply a counted failure, not a crash."
    from randsae.autointerp import synthetic_records, synthetic_vocab
    from randsae.llm import llm_explanations, llm_scores
    rec = synthetic_records(3, n_train=3, n_test=2, n_negative=2, vocab_size=50, window_len=6, seed=1)
    vocab = synthetic_vocab(50)

    n_scoring = []
    def serve(path, req):
        if req.get("max_tokens") != 1:   # an explanation request
            return 200, json.dumps(canned_openai_reply("Some thoughts.\n[EXPLANATION]: tokens t1 and t2")).encode()
        n_scoring.append(1)
        if len(n_scoring) in (3, 10): return 200, b'{"choices": [ oops'   # two malformed replies
        return 200, json.dumps(canned_openai_reply("1", TOP)).encode()

    with local_server(serve) as (url, requests):
        client = CachedClient(OpenAIClient("served-model", url, max_retries=0), tmp_path)
        ex = llm_explanations(rec, client, vocab, n_examples=2, progress=False)
        assert ex.explanation.tolist() == ["tokens t1 and t2"] * 3 and ex.error.isna().all()
        sc = llm_scores(rec, dict(zip(ex.latent, ex.explanation)), client, vocab, progress=False)
    assert set(sc.explainer) == {"served-model"} and len(sc) == 2 * 3 * 4
    ok = sc.probability.dropna()
    assert len(ok) and all(abs(p - prob_one(TOP)) < 1e-9 for p in ok)   # P("1") pooled over "1" and " 1", over P("0") + P("1")
    assert sc.probability.isna().sum() == 2 == client.stats()["failures"], "every malformed reply is counted, and only those"
    assert sum(r["json"]["max_tokens"] == 1 for r in requests) == len(sc)   # one example per scoring request


# ---------------------------------------------------------------- a failing server on a seeded schedule (issue 14, section 4)

from randsae.llm import (CACHE_FORMAT, FAULTS, FAILURE_KINDS, ConnectionClosedError, EmptyReplyError, check_cache_entry, failure_kind,
                         fault_schedule, faulty_reply)

LP = {"1": math.log(0.75), "0": math.log(0.25)}
EXPLAIN = "Some thoughts.\n[EXPLANATION]: tokens t1 and t2"

def healthy(path, req):
    "Explanations for long requests, P('1') = 0.75 for one-token scoring requests."
    return 200, json.dumps(canned_openai_reply(EXPLAIN if req.get("max_tokens") != 1 else "1", LP, prompt_tokens=7)).encode()

def fast_client(url, **kw):
    return OpenAIClient("served-model", url, **{"timeout": 0.2, "connect_timeout": 0.2, "backoff": 0.01, "max_retries": 2, **kw})

RETRIED_AS = {"timeout": "timeout", "trickle": "timeout", "http_429": "http_429", "http_429_retry_after": "http_429", "http_500": "http_5xx",
              "http_503": "http_5xx", "closed": "connection", "malformed": "malformed"}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_once_is_retried_or_counted(transport, fault, tmp_path):
    "One fault, then a healthy server: a transient fault is retried (counted under its kind) and the answer cached; an empty reply is a failure, not cached."
    for method in ("generate", "score"):
        with local_server(faulty_reply(healthy, [fault], hang_s=0.6, drip_s=0.005)) as (url, reqs):
            cc = CachedClient(fast_client(url, timeout=0.3), tmp_path/method)
            t0 = time.perf_counter()
            got = cc.generate(ask("x")).ok if method == "generate" else bool(cc.next_token_logprobs(ask("x")))
            assert time.perf_counter() - t0 < 5   # bounded (generous: a loaded machine is slow)
            s = cc.stats(); cached = len(list((tmp_path/method).rglob("*.json")))
        # on a loaded machine a healthy answer may also miss the short timeout once: extra 'timeout' retries are allowed
        extra = s["retries"].get("timeout", 0) - (fault in ("timeout", "trickle"))
        assert set(s["retries"]) <= {RETRIED_AS.get(fault, "timeout"), "timeout"} and len(reqs) == 1 + sum(s["retries"].values())
        if fault == "empty":
            assert (got, len(reqs), s["failure_kinds"], cached) == (False, 1, {"empty": 1}, 0)
        elif fault == "slow":
            assert (got, len(reqs) - extra, s["failures"], cached) == (True, 1, 0, 1)
        else:
            assert (got, len(reqs) - extra, s["failures"], s["retries"].get(RETRIED_AS[fault]) - max(extra, 0) * (RETRIED_AS[fault] == "timeout"), cached) == (True, 2, 0, 1, 1)


@pytest.mark.parametrize("fault, kind, n_requests", [
    ("malformed", "malformed", 2),        # retried once only
    ("empty", "empty", 1),                # not retried
    ("http_503", "http_5xx", 3),          # retried max_retries times
    ("closed", "connection", 3),
    ("timeout", "timeout", 3),
])
def test_persistent_faults_fail_with_their_kind(fault, kind, n_requests, tmp_path):
    "A fault on every attempt: the request fails under its kind after as many attempts as that kind gets, and is asked again next time."
    with local_server(faulty_reply(healthy, [fault] * n_requests, hang_s=0.4)) as (url, reqs):
        cc = CachedClient(fast_client(url), tmp_path)
        assert cc.next_token_logprobs(ask("x")) == {}
        assert len(reqs) == n_requests and cc.stats()["failure_kinds"] == {kind: 1}
        assert cc.next_token_logprobs(ask("x")) != {} and len(reqs) == n_requests + 1   # not cached: asked again, now healthy
    assert set(cc.stats()["failure_kinds"]) <= set(FAILURE_KINDS)


def test_no_retry_for_4xx_or_unreachable(tmp_path):
    with local_server(reply) as (url, reqs):
        with pytest.raises(llm.HTTPStatusError): fast_client(url).generate(ask("404"))
        assert len(reqs) == 1
    port = closed_port(); c = fast_client(f"http://127.0.0.1:{port}", max_retries=5)
    with pytest.raises(ConnectionError) as e: c.generate(ask("x"))
    assert failure_kind(e.value) == "unreachable" and c.retries == {}


def test_retry_after_is_honoured_up_to_the_cap(monkeypatch):
    # the waits the client asks for, not wall seconds: a loaded machine (make test runs two workers) stretches the latter
    waits, sleep = [], time.sleep
    monkeypatch.setattr(llm.time, "sleep", lambda s: (waits.append(s), sleep(s))[1])
    for cap, wanted in ((5.0, 0.3), (0.05, 0.05)):
        waits.clear()
        with local_server(faulty_reply(healthy, ["http_429_retry_after"], retry_after_s=0.3)) as (url, reqs):
            fast_client(url, max_backoff=cap).generate(ask("x"))
        assert len(reqs) == 2 and waits == [pytest.approx(wanted)], (cap, waits)
    assert llm._retry_after("2") == 2.0 and llm._retry_after("soon") is None and llm._retry_after(None) is None
    assert 0 <= llm._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1    # a date in the past: no wait


def test_backoff_is_exponential_jittered_seeded_and_capped():
    waits = lambda seed: [OpenAIClient("m", backoff=1.0, max_backoff=5.0, seed=seed)._wait(a, RuntimeError()) for a in range(6)]
    w = waits(7)
    assert w == waits(7) != waits(8)
    for a, x in enumerate(w): assert 0.5 * min(5.0, 2**a) <= x <= min(5.0, 2**a)
    assert OpenAIClient("m", max_backoff=2.0)._wait(0, llm.HTTPStatusError("u", 429, "", retry_after=60)) == 2.0


def test_request_deadline_bounds_retries():
    with local_server(faulty_reply(healthy, ["timeout"] * 20, hang_s=0.5)) as (url, reqs):
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError): fast_client(url, max_retries=50, deadline=0.5).generate(ask("x"))
        assert time.perf_counter() - t0 < 3 and 1 <= len(reqs) <= 3   # without the deadline: 51 attempts, over 10 s


@pytest.mark.parametrize("dead", ["http_503", "unreachable", "timeout"])
def test_a_dead_server_stops_the_interp_loop(dead, tmp_path, caplog):
    "Ten failed requests in a row and the cached client stops asking: every other example fails at once as 'stopped'."
    from randsae.autointerp import synthetic_records, synthetic_vocab
    rec = synthetic_records(20, n_train=3, n_test=10, n_negative=10, vocab_size=50, window_len=6, seed=1)
    explanations = {i: "tokens t1" for i in range(20)}
    n_row = 4 if dead == "timeout" else 10   # the default, but a hanging server takes a while
    t0 = time.perf_counter()
    with local_server(faulty_reply(healthy, [dead if dead != "unreachable" else "ok"] * 10_000, hang_s=0.3)) as (url, reqs):
        if dead == "unreachable": url = f"http://127.0.0.1:{closed_port()}"
        cc = CachedClient(fast_client(url, timeout=0.1), tmp_path, max_consecutive_failures=n_row)
        sc = llm.llm_scores(rec, explanations, cc, synthetic_vocab(50), progress=False)
        n = len(reqs)
    s = cc.stats(); per_request = 1 if dead == "unreachable" else 3
    assert sc.probability.isna().all() and len(sc) == 2 * 20 * 20
    assert s["failure_kinds"] == {{"http_503": "http_5xx"}.get(dead, dead): n_row, "stopped": len(sc) - n_row}
    assert n == (0 if dead == "unreachable" else n_row * per_request)
    assert time.perf_counter() - t0 < 6 and f"{n_row} requests failed in a row" in s["stopped"]
    assert sum("stopped asking served-model" in r.message for r in caplog.records) == 1
    assert list(tmp_path.rglob("*.json")) == []


def test_failure_budget_in_count_and_seconds(tmp_path):
    sched = ["http_500", "ok"] * 100   # alternating: never ten in a row
    with local_server(faulty_reply(healthy, sched)) as (url, reqs):
        cc = CachedClient(fast_client(url, max_retries=0), tmp_path/"a", max_failures=5)
        out = cc.score_batch([ask(str(i)) for i in range(40)])
        assert sum(bool(o) for o in out) == 4 and len(reqs) == 9 and cc.stats()["failure_kinds"] == {"http_5xx": 5, "stopped": 31}
    with local_server(faulty_reply(healthy, ["timeout"] * 100, hang_s=0.3)) as (url, reqs):
        cc = CachedClient(fast_client(url, max_retries=0), tmp_path/"b", max_failure_seconds=0.5)
        t0 = time.perf_counter(); cc.score_batch([ask(str(i)) for i in range(40)])
        assert 2 <= len(reqs) <= 3 and time.perf_counter() - t0 < 4 and "failed requests took" in cc.stopped   # without the budget: 40 requests


def _interp(url, cache, rec, vocab, **kw):
    cc = CachedClient(fast_client(url, max_retries=1, **kw), cache)
    ex = llm.llm_explanations(rec, cc, vocab, n_examples=2, progress=False)
    sc = llm.llm_scores(rec, {i: "tokens t1 and t2" for i in range(len(ex))}, cc, vocab, n_pos=2, n_neg=2, progress=False)
    return ex, sc, cc.stats()


def test_seeded_failing_server_then_healthy_rerun_fills_exactly_the_missing(transport, tmp_path):
    "The interp functions complete against every fault at once; failures are counted by kind, never cached; a healthy rerun asks exactly for the missing answers."
    from randsae.autointerp import synthetic_records, synthetic_vocab
    rec, vocab = synthetic_records(3, n_train=3, n_test=2, n_negative=2, vocab_size=50, window_len=6, seed=1), synthetic_vocab(50)
    schedule = fault_schedule(200, {f: 0.08 for f in FAULTS}, seed={"httpx": 0, "urllib": 1}[transport])
    with local_server(faulty_reply(healthy, schedule, hang_s=0.4, drip_s=0.005)) as (url, reqs):
        ex1, sc1, s1 = _interp(url, tmp_path/"cache", rec, vocab)
        served = len(reqs)
    missing = int(ex1.explanation.isna().sum() + sc1.probability.isna().sum())
    assert 0 < missing < len(ex1) + len(sc1), "the seed gives some failures, and the retries cure most"
    assert s1["failures"] == missing == sum(s1["failure_kinds"].values()) and s1["stopped"] is None
    assert set(s1["failure_kinds"]) <= set(FAILURE_KINDS) and sum(s1["retries"].values()) > 0
    assert len(list((tmp_path/"cache").rglob("*.json"))) == len(ex1) + len(sc1) - missing, "failures are never cached"
    assert served == s1["misses"] + sum(s1["retries"].values())        # one request per miss, plus one per retry
    with local_server(healthy) as (url, reqs):
        ex2, sc2, s2 = _interp(url, tmp_path/"cache", rec, vocab)
        assert len(reqs) == missing == s2["misses"] and s2["failures"] == 0
    with local_server(healthy) as (url, _):
        ex3, sc3, _ = _interp(url, tmp_path/"clean", rec, vocab)
    assert ex2.explanation.tolist() == ex3.explanation.tolist() and sc2.probability.tolist() == sc3.probability.tolist()
    assert (sc2.probability == 0.75).all()


# ---------------------------------------------------------------- the response cache's integrity (issue 14, section 2)

def _xor_middle(b: bytes) -> bytes:
    i = len(b) // 2; return b[:i] + bytes(x ^ 0xFF for x in b[i:i + 8]) + b[i + 8:]

def _old_version(b: bytes) -> bytes:
    "The entry as randsae wrote it before format 2: no format, key or checksum."
    e = json.loads(b); return json.dumps({k: e[k] for k in ("model", "method", "params", "messages", "result")}).encode()

def _other_format(b: bytes) -> bytes:
    "A well-formed entry with a valid checksum, of another cache format."
    e = json.loads(b); e["format"] = "randsae-llm-cache/1"; e["sha256"] = llm._entry_digest(e); return json.dumps(e).encode()

def _altered_answer(b: bytes) -> bytes:
    "Valid JSON of the right shape with another answer in it (a flipped digit of a log-probability, a changed word)."
    e = json.loads(b); r = e["result"]
    if "text" in r: r["text"] = r["text"].replace("t2", "t3")
    else: r["1"] += 0.1
    return json.dumps(e, indent=2, sort_keys=True).encode()

DAMAGE = {"truncate": lambda b: b[:len(b) // 2], "flip": _xor_middle, "altered_answer": _altered_answer,
          "old_version": _old_version, "other_format": _other_format}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_entries_are_warned_deleted_and_asked_again(damage, tmp_path, caplog):
    from randsae.autointerp import synthetic_records, synthetic_vocab
    rec, vocab = synthetic_records(2, n_train=3, n_test=2, n_negative=2, vocab_size=50, window_len=6, seed=1), synthetic_vocab(50)
    with local_server(healthy) as (url, reqs):
        ex1, sc1, _ = _interp(url, tmp_path, rec, vocab)
        files = sorted(tmp_path.rglob("*.json")); good = {f: f.read_bytes() for f in files}
        hit = files[::3]
        for f in hit:
            bad = DAMAGE[damage](good[f]); assert bad != good[f]; f.write_bytes(bad)
            with pytest.raises(ValueError): check_cache_entry(bad, f.stem)
        n = len(reqs); caplog.clear()
        ex2, sc2, s2 = _interp(url, tmp_path, rec, vocab)
        assert len(reqs) - n == len(hit) == s2["rebuilt"] == s2["misses"]
    assert ex2.equals(ex1) and sc2.probability.tolist() == sc1.probability.tolist()
    same = lambda b, f: {k: v for k, v in check_cache_entry(b, f.stem).items() if k != "seconds"}   # a reply's wall seconds differ
    assert all(same(f.read_bytes(), f) == same(good[f], f) for f in files), "rebuilt with the same answers"
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert all(str(f) in warned for f in hit)
    if damage in ("old_version", "other_format"): assert "another version of randsae" in warned


def test_cache_entry_of_another_key_is_not_an_answer(tmp_path):
    with local_server(healthy) as (url, reqs):
        cc = CachedClient(fast_client(url), tmp_path)
        cc.generate(ask("a")); cc.generate(ask("b"))
        fa, fb = sorted(tmp_path.rglob("*.json"), key=lambda p: p.stat().st_mtime)
        fa.write_bytes(fb.read_bytes())     # b's answer under a's name
        assert cc.generate(ask("a")).ok and len(reqs) == 3 and cc.stats()["rebuilt"] == 1
    assert json.loads(fa.read_text())["key"] == fa.stem and json.loads(fa.read_text())["format"] == CACHE_FORMAT
