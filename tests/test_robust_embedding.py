"""Embedding-space attacks on tiny random-init causal LMs: the attacked quantity is the target's
teacher-forced log-prob, the step is FGSM's / PGD's on the embeddings, nearest tokens, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import count_forwards, tiny_causal_lm

from llmattr._core.errors import InputError
from llmattr.robust import PGD, EmbeddingAttackResult, EmbeddingFGSM, EmbeddingPGD

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 40
IDS = torch.tensor([[5, 7, 9, 11, 13, 2]])
TARGET = torch.tensor([3, 4, 8])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request):
    return tiny_causal_lm(request.param, VOCAB, init=0.2, dtype=torch.float64)


def teacher_forced(lm, ids, target):
    """Summed log-prob of ``target`` after each prompt, from token ids."""
    with torch.no_grad():
        full = torch.cat([ids, target.expand(ids.shape[0], -1)], 1)
        logp = torch.log_softmax(lm(full).logits, -1)[:, ids.shape[1] - 1 : -1]
    return logp.gather(-1, target.expand(ids.shape[0], -1).unsqueeze(-1)).squeeze(-1).sum(1)


def test_scores_are_the_teacher_forced_log_probs(lm):
    r = EmbeddingFGSM(lm).perturb(IDS, 0.0, TARGET)
    assert isinstance(r, EmbeddingAttackResult)
    expected = teacher_forced(lm, IDS, TARGET)
    for score in (r.original_logprob, r.perturbed_logprob, r.nearest_logprob):
        assert torch.allclose(score, expected, atol=1e-10)
    assert torch.equal(r.nearest_ids, IDS) and not bool(r.changed.any())


def test_fgsm_step_is_the_sign_of_the_log_prob_gradient(lm):
    emb = lm.get_input_embeddings()(IDS).detach().requires_grad_()
    full = torch.cat([emb, lm.get_input_embeddings()(TARGET[:-1]).unsqueeze(0)], 1)
    logp = torch.log_softmax(lm(inputs_embeds=full).logits, -1)[0, IDS.shape[1] - 1 :]
    (grad,) = torch.autograd.grad(logp.gather(-1, TARGET[:, None]).sum(), emb)
    down = EmbeddingFGSM(lm).perturb(IDS, 0.01, TARGET)
    up = EmbeddingFGSM(lm).perturb(IDS, 0.01, TARGET, targeted=True)
    assert torch.allclose(down.perturbed_embeddings - down.original_embeddings, -0.01 * grad.sign())
    assert torch.allclose(up.perturbed_embeddings - up.original_embeddings, 0.01 * grad.sign())


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_moves_the_target_log_prob_both_ways_inside_the_ball(lm, norm):
    # PGD steps by the gradient's sign (Captum's rule) also for L2: a step moves every one of
    # the L * H = 192 coordinates, so its L2 length is step_size * sqrt(192)
    radius, step = (0.3, 0.075) if norm == "Linf" else (2.0, 0.02)
    down = EmbeddingPGD(lm).perturb(IDS, radius, step, 8, TARGET, norm=norm)
    up = EmbeddingPGD(lm).perturb(IDS, radius, step, 8, TARGET, targeted=True, norm=norm)
    assert bool(down.perturbed_logprob < down.original_logprob - 0.1)
    assert bool(up.perturbed_logprob > up.original_logprob + 0.1)
    delta = (down.perturbed_embeddings - down.original_embeddings).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert bool((size <= radius + 1e-9).all())


def test_mask_freezes_positions_and_nearest_tokens(lm):
    mask = torch.tensor([0, 0, 1, 1, 0, 0])
    r = EmbeddingPGD(lm).perturb(IDS, 5.0, 1.0, 6, TARGET, mask=mask)
    frozen = mask == 0
    assert torch.equal(r.perturbed_embeddings[:, frozen], r.original_embeddings[:, frozen])
    assert torch.equal(r.nearest_ids[:, frozen], IDS[:, frozen])
    # nearest tokens really are the nearest rows of the embedding matrix
    w = lm.get_input_embeddings().weight.detach()
    moved = r.perturbed_embeddings[0, 2]
    assert int(r.nearest_ids[0, 2]) == int(((w - moved) ** 2).sum(1).argmin())
    assert torch.allclose(r.nearest_logprob, teacher_forced(lm, r.nearest_ids, TARGET), atol=1e-10)


def test_a_batch_is_its_prompts_one_by_one(lm):
    ids = torch.cat([IDS, IDS.flip(1)])
    both = EmbeddingPGD(lm).perturb(ids, 0.2, 0.05, 3, TARGET)
    for i in range(2):
        one = EmbeddingPGD(lm).perturb(ids[i], 0.2, 0.05, 3, TARGET)
        assert torch.allclose(both.perturbed_embeddings[i], one.perturbed_embeddings[0])
        assert torch.allclose(both.perturbed_logprob[i], one.perturbed_logprob[0])


def test_full_attention_mask_changes_nothing(lm):
    plain = EmbeddingPGD(lm).perturb(IDS, 0.2, 0.05, 2, TARGET)
    masked = EmbeddingPGD(lm).perturb(IDS, 0.2, 0.05, 2, TARGET, attention_mask=torch.ones(1, 6))
    assert torch.allclose(plain.perturbed_embeddings, masked.perturbed_embeddings)
    assert torch.allclose(plain.perturbed_logprob, masked.perturbed_logprob)


def test_text_prompt_and_generated_target():
    from test_captum_parity_llm import llama_style_tokenizer

    tok = llama_style_tokenizer()
    model = tiny_causal_lm("llama", len(tok), init=0.2, dtype=torch.float64)
    r = EmbeddingFGSM(model, tok).perturb("Dave lives in Palm Coast", 0.05, " playing golf")
    assert r.input_ids[0, 0] == tok.bos_token_id
    assert torch.equal(
        r.target_ids[0], torch.tensor(tok.encode(" playing golf", add_special_tokens=False))
    )
    assert len(r.nearest_text(tok)) == 1
    generated = EmbeddingFGSM(model, tok).perturb("Dave lives in Palm Coast", 0.05)
    assert generated.target_ids.shape[1] > 0
    assert torch.allclose(
        generated.original_logprob,
        teacher_forced(model, generated.input_ids, generated.target_ids[0]),
        atol=1e-10,
    )


def test_model_state_is_untouched(lm):
    lm.train()
    try:
        EmbeddingPGD(lm).perturb(IDS, 0.1, 0.05, 2, TARGET)
        assert lm.training
    finally:
        lm.eval()
    assert all(p.grad is None and p.requires_grad for p in lm.parameters())


def test_bad_input_is_refused_before_any_forward(lm):
    calls = count_forwards(lm)
    try:
        attack = EmbeddingPGD(lm)
        with pytest.raises(InputError, match="token ids"):
            attack.perturb(IDS.double(), 0.1, 0.05, 2, TARGET)
        with pytest.raises(InputError, match="step_num"):
            attack.perturb(IDS, 0.1, 0.05, 0, TARGET)
        with pytest.raises(InputError, match="radius"):
            attack.perturb(IDS, -0.1, 0.05, 2, TARGET)
        with pytest.raises(InputError, match="norm"):
            attack.perturb(IDS, 0.1, 0.05, 2, TARGET, norm="L1")
        with pytest.raises(InputError, match="mask"):
            attack.perturb(IDS, 0.1, 0.05, 2, TARGET, mask=torch.ones(4))
        with pytest.raises(InputError, match="epsilon"):
            EmbeddingFGSM(lm).perturb(IDS, -1.0, TARGET)
        with pytest.raises(InputError, match="mask"):
            attack.perturb(IDS, 0.1, 0.05, 2, None, mask=torch.ones(1, 6, 5))
        with pytest.raises(InputError, match="attention_mask"):
            attack.perturb(IDS, 0.1, 0.05, 2, None, attention_mask=torch.ones(1, 5))
        with pytest.raises(InputError, match="tokenizer"):
            attack.perturb("a prompt", 0.1, 0.05, 2, TARGET)
        assert calls[0] == 0
    finally:
        del lm.forward
    with pytest.raises(TypeError, match="get_input_embeddings"):
        EmbeddingPGD(torch.nn.Linear(2, 2))


def test_plain_pgd_on_token_ids_points_to_the_embeddings(lm):
    with pytest.raises(InputError, match="embedding"):
        PGD(lm).perturb(IDS, 0.1, 0.05, 2, 0)
