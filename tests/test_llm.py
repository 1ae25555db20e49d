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
