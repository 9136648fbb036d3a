"""VLLMProvider against Captum's, offline: a tiny OpenAI-compatible server on 127.0.0.1 (standard
library ``http.server`` in a thread) answers completions the way vLLM does (``prompt_logprobs``
entries ``{token_id: {"logprob", "rank", "decoded_token"}}``, None for the first prompt token),
backed by a tiny random-init GPT-2 in float64 and a byte-level BPE tokenizer trained here.

RemoteLLMAttribution over VLLMProvider must give LLMAttribution's numbers on the same model, and
Captum's RemoteLLMAttribution over Captum's VLLMProvider on the same server."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import tiny_causal_lm

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
ca = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402
from llmattr.text import RemoteLLMAttribution, TextTemplateInput, VLLMProvider  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
needs_openai = pytest.mark.skipif(
    importlib.util.find_spec("openai") is None, reason="openai is not installed"
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog and then slept",
    "a red fox and a brown dog ran over the hill, then they slept",
]
TARGET = " and then slept"
TEMPLATE, VALUES, BASELINES = "{} quick {} fox", ["the", "brown"], ["a", "red"]
MODEL = "tiny-gpt2"


def byte_level_tokenizer():
    """GPT-2-like: byte-level BPE, no special tokens added, leading spaces kept by decode."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tk.train_from_iterator(CORPUS * 3, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


class FakeVLLM:
    """The two vLLM endpoints Captum's provider uses: ``GET /v1/models`` and
    ``POST /v1/completions`` (with vLLM's ``prompt_logprobs``). Records each completions body."""

    def __init__(self, model, tokenizer, models=(MODEL,), prompt_logprobs=True):
        self.model, self.tok, self.models = model, tokenizer, list(models)
        self.prompt_logprobs, self.bodies = prompt_logprobs, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, obj, code=200):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm"}
                        for m in fake.models]  # fmt: skip
                self._send({"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                self._send(fake.complete(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @torch.no_grad()
    def complete(self, body):
        ids = body["prompt"]  # token ids, or text: vLLM adds the tokenizer's special tokens
        ids = list(ids) if isinstance(ids, list) else self.tok.encode(ids)
        n_new, temperature = body.get("max_tokens") or 16, body.get("temperature")
        gen = torch.Generator().manual_seed(body.get("seed") or 0)
        seq = list(ids)
        for _ in range(n_new):
            logits = self.model(torch.tensor([seq])).logits[0, -1]
            if temperature == 0:
                seq.append(int(logits.argmax()))
            else:  # vLLM's default temperature is 1: sample
                probs = torch.softmax(logits / (temperature or 1.0), -1)
                seq.append(int(torch.multinomial(probs, 1, generator=gen)))
        choice = {"index": 0, "text": self.tok.decode(seq[len(ids):]), "logprobs": None,
                  "finish_reason": "length", "stop_reason": None}  # fmt: skip
        if self.prompt_logprobs and body.get("prompt_logprobs") is not None:
            logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0, :-1], -1)
            entries = [None]
            for pos, tid in enumerate(ids[1:]):
                lp = logp[pos, tid]
                entries.append({str(tid): {"logprob": float(lp),
                                           "rank": int((logp[pos] > lp).sum()) + 1,
                                           "decoded_token": self.tok.decode([tid])}})  # fmt: skip
            choice["prompt_logprobs"] = entries
        usage = {"prompt_tokens": len(ids), "completion_tokens": n_new,
                 "total_tokens": len(ids) + n_new}  # fmt: skip
        return {"id": "cmpl-0", "object": "text_completion", "created": 0,
                "model": body["model"], "choices": [choice], "usage": usage}  # fmt: skip

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_causal_lm("gpt2", len(tok), init=0.2, dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def local_no_proxy():
    """The server is local: keep any configured HTTP proxy out of the way."""
    old = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def server(gpt2, tok):
    with FakeVLLM(gpt2, tok) as srv:
        yield srv


def test_import_without_openai(monkeypatch):
    """llmattr imports without openai; the provider says how to install it, as Captum's does."""
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # "import openai" now fails
    with pytest.raises(ImportError, match="pip install openai"):
        VLLMProvider("http://127.0.0.1:1/v1")
    with pytest.raises(ImportError, match="pip install openai"):
        ca.VLLMProvider("http://127.0.0.1:1/v1")


@needs_openai
def test_constructor_model_name(server):
    ours, theirs = VLLMProvider(server.url), ca.VLLMProvider(server.url)
    assert ours.model_name == theirs.model_name == MODEL
    assert ours.api_url == theirs.api_url == server.url
    named = VLLMProvider(server.url, model_name="other")
    assert named.model_name == "other"
    assert isinstance(ours, llmattr.text.RemoteLLMProvider)


@needs_openai
def test_constructor_errors(gpt2, tok):
    for cls in (VLLMProvider, ca.VLLMProvider):
        with pytest.raises(ValueError, match="API URL is required"):
            cls("   ")
    with FakeVLLM(gpt2, tok, models=()) as empty:
        for cls in (VLLMProvider, ca.VLLMProvider):
            with pytest.raises(ValueError, match="No models available"):
                cls(empty.url)


@needs_openai
def test_unreachable_server_is_a_connection_error(gpt2, tok):
    """Captum documents ConnectionError but raises a bare Exception (openai's connection error
    is not a ConnectionError); ours raises ConnectionError."""
    with FakeVLLM(gpt2, tok) as srv:
        url = srv.url  # a port that was just closed
    with pytest.raises(ConnectionError, match="Failed to connect"):
        VLLMProvider(url)
    with pytest.raises(Exception, match="Unexpected error") as err:
        ca.VLLMProvider(url)
    assert not isinstance(err.value, ConnectionError)


@needs_openai
def test_get_logprobs_same_as_captum_and_local(server, gpt2, tok):
    ours, theirs = VLLMProvider(server.url), ca.VLLMProvider(server.url)
    prompt = "the quick brown fox"
    a = ours.get_logprobs(prompt, TARGET, tok)
    b = theirs.get_logprobs(prompt, TARGET, tok)
    assert a == b and len(a) == len(tok.encode(TARGET, add_special_tokens=False))
    want = local_logprobs(gpt2, tok, prompt, TARGET)
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), want)
    body = server.bodies[-1]
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1 and body["temperature"] == 0


@needs_openai
def test_get_logprobs_errors(server, gpt2, tok):
    ours, theirs = VLLMProvider(server.url), ca.VLLMProvider(server.url)
    for p in (ours, theirs):
        with pytest.raises(ValueError, match="Tokenizer is required"):
            p.get_logprobs("the", TARGET)
        with pytest.raises(ValueError, match="cannot be empty"):
            p.get_logprobs("the", "", tok)
        # the target is the whole prompt: vLLM has no log-prob for the first token
        with pytest.raises(ValueError, match="Empty probability data"):
            p.get_logprobs("", TARGET, tok)
    with FakeVLLM(gpt2, tok, prompt_logprobs=False) as plain:  # e.g. not a vLLM server
        for cls in (VLLMProvider, ca.VLLMProvider):
            with pytest.raises(KeyError, match="prompt_logprobs"):
                cls(plain.url).get_logprobs("the", TARGET, tok)


@needs_openai
def test_generate_arguments(server):
    ours, theirs = VLLMProvider(server.url), ca.VLLMProvider(server.url)
    gen = {"max_new_tokens": 3, "temperature": 0.0}
    assert ours.generate("the quick", **gen) == theirs.generate("the quick", **gen)
    assert server.bodies[-1]["max_tokens"] == server.bodies[-2]["max_tokens"] == 3
    assert gen == {"max_new_tokens": 3, "temperature": 0.0}  # caller's dict untouched
    ours.generate("the quick")
    assert server.bodies[-1]["max_tokens"] == 25
    both = {"max_tokens": 2, "max_new_tokens": 3}
    with pytest.raises(InputError, match="not both"):  # Captum: "Unexpected error" (TypeError)
        ours.generate("the quick", **both)
    with pytest.raises(Exception, match="Unexpected error"):
        theirs.generate("the quick", **both)


def inputs():
    kw = {"baselines": BASELINES}
    return TextTemplateInput(TEMPLATE, VALUES, **kw), ca.TextTemplateInput(TEMPLATE, VALUES, **kw)


@needs_openai
@pytest.mark.parametrize("attr_target", ["log_prob", "prob"])
def test_remote_attribution_matches_local_and_captum(server, gpt2, tok, attr_target):
    ph = RemoteLLMAttribution.placeholder_model
    ours = RemoteLLMAttribution(
        llmattr.FeatureAblation(ph), tok, VLLMProvider(server.url), attr_target=attr_target
    )
    theirs = ca.RemoteLLMAttribution(
        ca.FeatureAblation(ca.RemoteLLMAttribution.placeholder_model), tok,
        ca.VLLMProvider(server.url), attr_target=attr_target,
    )  # fmt: skip
    local = llmattr.LLMAttribution(llmattr.FeatureAblation(gpt2), tok, attr_target=attr_target)
    a, b = inputs()
    r, c = ours.attribute(a, target=TARGET), theirs.attribute(b, target=TARGET)
    loc = local.attribute(a, target=TARGET)
    assert float(c.seq_attr.abs().max()) > 0
    for other in (c, loc):
        assert r.seq_attr.shape == other.seq_attr.shape == (2,)
        assert r.token_attr.shape == other.token_attr.shape == (3, 2)
        torch.testing.assert_close(r.seq_attr.double(), other.seq_attr.double(),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(r.token_attr.double(), other.token_attr.double(),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    torch.testing.assert_close(r.output_probs.double(), loc.output_probs.double(),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    assert r.seq_attr.dtype == c.seq_attr.dtype


@needs_openai
def test_greedy_generation_when_do_sample_false(server, gpt2, tok):
    """RemoteLLMAttribution's default gen_args say do_sample=False: ours asks the server for
    greedy decoding (temperature 0) and explains the same target as LLMAttribution's local
    greedy generation; Captum drops do_sample and the server samples at its default."""
    gen = {"max_new_tokens": 3, "do_sample": False, "temperature": None, "top_p": None}
    ph = RemoteLLMAttribution.placeholder_model
    ours = RemoteLLMAttribution(llmattr.FeatureAblation(ph), tok, VLLMProvider(server.url))
    local = llmattr.LLMAttribution(llmattr.FeatureAblation(gpt2), tok)
    a, _ = inputs()
    r = ours.attribute(a, gen_args=dict(gen))
    assert server.bodies[0]["temperature"] == 0
    loc = local.attribute(a, gen_args={"max_new_tokens": 3, "do_sample": False})
    assert r.info["target_text"] == "".join(loc.output_tokens)  # the same greedy target
    assert len(r.output_tokens) == len(loc.output_tokens) == 3
    torch.testing.assert_close(r.seq_attr.double(), loc.seq_attr.double(), rtol=1e-4, atol=1e-6)
    n = len(server.bodies)
    ca.VLLMProvider(server.url).generate("the quick", **gen)
    assert server.bodies[n]["temperature"] is None  # the server's default: sampling


def local_logprobs(gpt2, tok, prompt, target):
    p, t = tok.encode(prompt), tok.encode(target, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(gpt2(torch.tensor([p + t])).logits[0, len(p) - 1 : -1], -1)
    return logp[range(len(t)), t]


@needs_openai
def test_send_token_ids_scores_the_targets_own_tokens(server, gpt2, tok):
    """A prompt ending inside a word: as text, the server merges "f" + "ox" into "fox" and the
    last t log-probs are not the target's tokens' (Captum's, and ours by default);
    send_token_ids=True scores exactly the target's tokens after the prompt's."""
    prompt, target = "the quick brown f", "ox and then slept"
    want = local_logprobs(gpt2, tok, prompt, target)
    fixed = VLLMProvider(server.url, send_token_ids=True).get_logprobs(prompt, target, tok)
    torch.testing.assert_close(torch.tensor(fixed, dtype=torch.float64), want)
    assert server.bodies[-1]["prompt"] == tok.encode(prompt) + tok.encode(
        target, add_special_tokens=False
    )
    as_text = VLLMProvider(server.url).get_logprobs(prompt, target, tok)
    assert as_text == ca.VLLMProvider(server.url).get_logprobs(prompt, target, tok)
    assert len(as_text) == len(want)
    assert not torch.allclose(torch.tensor(as_text, dtype=torch.float64), want)
