"""TCAV: Testing with Concept Activation Vectors (Kim et al., https://arxiv.org/abs/1711.11279).

For each experimental set (two or more concepts) and layer, a classifier separates the concepts'
activations; its weight rows are the CAVs ``(C, F)``. The TCAV score of concept ``c`` for inputs
``x`` is the share of inputs whose prediction's sensitivity ``s(x)`` (the gradient of the target
with respect to the layer, by default) points along the concept's CAV:

* ``sign_count[c] = mean_x [s(x) . v_c > 0]``
* ``magnitude[c] = sum_x max(s(x) . v_c, 0) / sum_x |s(x) . v_c|``

Everything is computed with llmattr's layer methods: the activations of all layers come from one
forward that stops at the deepest layer, the default sensitivities of all layers from one forward
and backward. Language models are first-class: give a ``tokenizer`` and concepts are texts,
inputs are prompts, ``target`` is a next-token id, and token activations are pooled (see
:mod:`.text`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .._core.errors import InputError, InputTypeError
from ..attr import LayerActivation, LayerGradientXActivation
from .cache import ActivationStore, fingerprint
from .cav import CAV, safe_name
from .classifier import Classifier, DefaultClassifier
from .concept import (
    Concept,
    ConceptInterpreter,
    check_examples,
    check_experimental_sets,
    concepts_to_str,
)
from .text import LastTokenLogits, Pooling, check_pooling, encode_texts, pool, text_batches

__all__ = ["TCAV"]


def _module(model: nn.Module, name: Any) -> nn.Module:
    if not isinstance(name, str):
        raise InputTypeError(f"Layers are given by name (str), got {type(name).__name__}.")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise InputError(
            f"Layer {name!r} is not in the model; layer names are those of "
            f"model.named_modules(), e.g. {names}."
        ) from None


def _flat(value: Any) -> Tensor:
    """A layer result ``(N, ...)`` (or a tuple of them) as ``(N, F)``."""
    parts = value if isinstance(value, tuple | list) else (value,)
    return torch.cat([p.reshape(len(p), -1) for p in parts], dim=1)


class TCAV(ConceptInterpreter):
    """Concept sensitivity of a model's predictions at named layers (Captum's ``TCAV``).

    Args:
        model: the model (a language model when ``tokenizer`` is given).
        layers: a layer name or a list of them (``model.named_modules()`` names).
        model_id: a name for ``model``'s files under ``save_path``; a fingerprint of the model is
            added, so another model under the same id never reuses them.
        classifier: a :class:`Classifier` (any object with ``train_and_eval``, ``weights`` and
            ``classes``). Default: :class:`DefaultClassifier`.
        layer_attr_method: a layer attribution whose ``layer`` is set to each layer in turn.
            Default: the gradient (``LayerGradientXActivation(..., multiply_by_inputs=False)``),
            as in Captum, for all layers in one backward pass. With a tokenizer, build it over
            ``LastTokenLogits(model)`` (the forward TCAV scores).
        attribute_to_layer_input: use the layers' inputs instead of their outputs.
        save_path: where activations and CAVs are cached.
        tokenizer: makes texts the examples and inputs (keyword only).
        pooling: for a tokenizer: ``"last"`` (default), ``"mean"`` or an int position.
        text_batch_size: texts per forward when a concept is a flat list of texts (not
            ``batch_size``, which Captum passes on to the classifier with its other kwargs).
        **classifier_kwargs: passed to ``classifier.train_and_eval`` (e.g. ``test_split_ratio``).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | list[str],
        model_id: str = "default_model_id",
        classifier: Classifier | None = None,
        layer_attr_method: Any = None,
        attribute_to_layer_input: bool = False,
        save_path: str = "./cav/",
        *,
        tokenizer: Any = None,
        pooling: Pooling = "last",
        text_batch_size: int = 64,
        **classifier_kwargs: Any,
    ) -> None:
        super().__init__(model)
        self.layers: list[str] = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise InputError("layers is empty; name at least one layer of the model.")
        self._modules = [_module(model, name) for name in self.layers]
        if not isinstance(model_id, str) or not model_id:
            raise InputError("model_id must be a non-empty string (a name for the cache folder).")
        self.model_id = model_id
        self.concepts: set[Concept] = set()
        self.classifier = DefaultClassifier() if classifier is None else classifier
        self.classifier_kwargs = classifier_kwargs
        self.cavs: dict[str, dict[str, CAV]] = {}
        self.tokenizer = tokenizer
        self.pooling = check_pooling(pooling)
        self.text_batch_size = text_batch_size
        self.forward_func: nn.Module = LastTokenLogits(model) if tokenizer is not None else model
        self._default_attr = layer_attr_method is None
        if layer_attr_method is None:
            layer_attr_method = LayerGradientXActivation(
                self.forward_func, self._modules[0], multiply_by_inputs=False
            )
        self.layer_attr_method = layer_attr_method
        self.attribute_to_layer_input = attribute_to_layer_input
        self.save_path = save_path
        self._names: dict[Any, str] = {}
        self._cavs_of: str | None = None  # the fingerprint self.cavs were trained for
        CAV.create_cav_dir_if_missing(save_path, model_id)

    # ---- keys and storage -----------------------------------------------------------------------

    def _fingerprint(self) -> str:
        tok = self.tokenizer
        text = None
        if tok is not None:
            size = len(tok) if hasattr(tok, "__len__") else None
            text = [type(tok).__name__, getattr(tok, "name_or_path", None), size, self.pooling]
        return fingerprint(self.model, to_input=self.attribute_to_layer_input, text=text)

    def _store(self) -> ActivationStore:
        return ActivationStore(os.path.join(self.save_path, safe_name(self.model_id), self._fp))

    def _cav_id(self) -> str:
        clf = fingerprint(nn.Module(), cls=type(self.classifier).__qualname__,
                          kwargs=self.classifier_kwargs)[:8]  # fmt: skip
        return f"{self.model_id}/{self._fp}/cav-{clf}"

    def _refresh(self, experimental_sets: list[list[Concept]]) -> None:
        """Register the sets' concepts (one name per id) and re-key storage on the current model."""
        for concepts in experimental_sets:
            for c in concepts:
                if self._names.get(c.id, c.name) != c.name:
                    raise InputError(
                        f"Concept id {c.id!r} was used as {self._names[c.id]!r} and now as "
                        f"{c.name!r}; give each concept its own id."
                    )
                self._names[c.id] = c.name
        self._fp = self._fingerprint()
        if self._cavs_of != self._fp:  # the model changed: CAVs held in memory are stale
            self.cavs, self._cavs_of = {}, self._fp

    # ---- activations ---------------------------------------------------------------------------

    def _batches(self, concept: Concept) -> Any:
        if self.tokenizer is None:
            return ((b, ()) for b in concept.data_iter)  # type: ignore[union-attr]
        device = next(self.model.parameters()).device
        return (
            encode_texts(self.tokenizer, texts, self.pooling, device)
            for texts in text_batches(concept.data_iter, self.text_batch_size)  # type: ignore[arg-type]
        )

    def generate_activation(self, layers: str | list[str], concept: Concept) -> None:
        """Compute and cache ``concept``'s activations at ``layers`` (one forward per batch, for
        all layers), pooled to ``(N, F)``."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not hasattr(self, "_fp"):
            self._refresh([[concept]])
        check_examples([concept])
        method = LayerActivation(self.forward_func, [_module(self.model, n) for n in layers])
        per_layer: list[list[Tensor]] = [[] for _ in layers]
        for inputs, mask in self._batches(concept):
            args = (mask,) if self.tokenizer is not None else None
            acts = method.attribute(inputs, args, self.attribute_to_layer_input)
            for out, act in zip(per_layer, acts):
                if self.tokenizer is not None:
                    act = act[0] if isinstance(act, tuple) else act
                    out.append(pool(act, mask, self.pooling).detach())
                else:
                    out.append(_flat(act).detach())
        if not per_layer[0]:
            raise InputError(f"{concept!r} has no examples: its data_iter yielded nothing.")
        store = self._store()
        for name, out in zip(layers, per_layer):
            store.save(name, concept, torch.cat(out))

    def generate_activations(self, concept_layers: dict[Concept, list[str]]) -> None:
        """:meth:`generate_activation` for each concept and its layers."""
        for concept, layers in concept_layers.items():
            self.generate_activation(layers, concept)

    def generate_all_activations(self) -> None:
        """:meth:`generate_activation` for every known concept at every layer."""
        for concept in self.concepts:
            self.generate_activation(self.layers, concept)

    # ---- CAVs ----------------------------------------------------------------------------------

    def load_cavs(self, concepts: list[Concept]) -> tuple[list[str], dict[Concept, list[str]]]:
        """Load the saved CAVs of ``concepts``; return the layers still to train and, per
        concept, the layers whose activations are not cached."""
        if not hasattr(self, "_fp"):
            self._refresh([concepts])
        key, store = concepts_to_str(concepts), self._store()
        layers: list[str] = []
        concept_layers: dict[Concept, list[str]] = {}
        for layer in self.layers:
            cav = self.cavs.get(key, {}).get(layer)
            cav = cav or CAV.load(self.save_path, self._cav_id(), concepts, layer)
            if cav is not None:
                self.cavs.setdefault(key, {})[layer] = cav
                continue
            layers.append(layer)
            for concept in concepts:
                if not store.exists(layer, concept):
                    concept_layers.setdefault(concept, []).append(layer)
        return layers, concept_layers

    def _train(self, concepts: list[Concept], layers: Sequence[str]) -> None:
        store = self._store()
        for layer in layers:
            acts = [store.load(layer, c) for c in concepts]
            x = torch.cat(acts)  # type: ignore[arg-type]
            y = torch.cat([torch.full((len(a),), c.id) for a, c in zip(acts, concepts)])  # type: ignore[arg-type]
            loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
            stats = self.classifier.train_and_eval(loader, **self.classifier_kwargs) or {}
            weights = torch.as_tensor(self.classifier.weights())
            classes = [int(c) for c in torch.as_tensor(self.classifier.classes()).reshape(-1)]
            if weights.dim() != 2 or weights.shape != (len(classes), x.shape[1]):
                raise InputError(
                    f"The classifier's weights() has shape {tuple(weights.shape)}; expected "
                    f"(n_classes={len(classes)}, n_features={x.shape[1]})."
                )
            cav = CAV(concepts, layer, {"weights": weights, "classes": classes, **stats},
                      self.save_path, self._cav_id())  # fmt: skip
            cav.save()
            self.cavs.setdefault(concepts_to_str(concepts), {})[layer] = cav

    def compute_cavs(
        self,
        experimental_sets: list[list[Concept]],
        force_train: bool = False,
        processes: int | None = None,
    ) -> dict[str, dict[str, CAV]]:
        """Train (or load) the CAVs of every set at every layer: ``{set key: {layer: CAV}}``.

        ``processes`` is accepted for Captum compatibility; training runs in this process (a
        linear model on cached activations takes milliseconds).
        """
        sets = check_experimental_sets(experimental_sets, need_data=False)
        self._refresh(sets)
        for concepts in sets:
            self.concepts.update(concepts)
        plans: list[tuple[list[Concept], list[str]]] = []
        needed: dict[Any, tuple[Concept, list[str]]] = {}  # concept id -> (concept, layers)
        for concepts in sets:
            if force_train:
                layers, missing = list(self.layers), {c: list(self.layers) for c in concepts}
            else:
                layers, missing = self.load_cavs(concepts)
            plans.append((concepts, layers))
            for concept, concept_layers in missing.items():
                todo = needed.setdefault(concept.id, (concept, []))[1]
                todo.extend(n for n in concept_layers if n not in todo)
        check_examples(c for c, _ in needed.values())  # every concept checked before any forward
        for concept, concept_layers in needed.values():
            self.generate_activation(concept_layers, concept)
        for concepts, layers in plans:
            self._train(concepts, layers)
        return self.cavs

    # ---- scores --------------------------------------------------------------------------------

    def _sensitivities(self, inputs: Any, target: Any, args: Any, kwargs: dict) -> list[Tensor]:
        """Per layer, the sensitivities ``(N, F)`` in the space of the CAVs."""
        mask = None
        if self.tokenizer is not None:
            inputs, mask = inputs
            args = (mask,)
        method = self.layer_attr_method
        runs = [self._modules] if self._default_attr else [[m] for m in self._modules]
        out = []
        for modules in runs:
            method.layer = modules if self._default_attr else modules[0]
            res = method.attribute(
                inputs, target=target, additional_forward_args=args,
                attribute_to_layer_input=self.attribute_to_layer_input, **kwargs,
            )  # fmt: skip
            for r in res if self._default_attr else [res]:
                if mask is not None:
                    out.append(pool(r[0] if isinstance(r, tuple) else r, mask, self.pooling, True))
                else:
                    out.append(_flat(r))
        return out

    def interpret(
        self,
        inputs: Any,
        experimental_sets: list[list[Concept]],
        target: Any = None,
        additional_forward_args: Any = None,
        processes: int | None = None,
        **kwargs: Any,
    ) -> dict[str, dict[str, dict[str, Tensor]]]:
        """TCAV scores ``{set key: {layer: {"sign_count": (C,), "magnitude": (C,)}}}``, each
        ``(C,)`` in the order of the set's concepts.

        Args:
            inputs: ``(N, ...)`` tensor(s); with a tokenizer, a prompt or a list of prompts.
            experimental_sets: lists of two or more concepts.
            target: which output to explain (with a tokenizer: the next-token id(s)).
            additional_forward_args: extra forward arguments (not with a tokenizer).
            processes: accepted for Captum compatibility (see :meth:`compute_cavs`).
            **kwargs: passed to the layer attribution method (e.g. ``n_steps``).
        """
        if "attribute_to_layer_input" in kwargs:
            raise InputError(
                "Set attribute_to_layer_input in the TCAV constructor: it applies to both the "
                "activations and the attributions."
            )
        sets = check_experimental_sets(experimental_sets, need_data=False)
        if self.tokenizer is not None:
            if additional_forward_args is not None:
                raise InputError("With a tokenizer, TCAV passes the attention mask itself; "
                                 "additional_forward_args must be None.")  # fmt: skip
            texts = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
                raise InputTypeError("With a tokenizer, inputs is a prompt or a list of prompts.")
            device = next(self.model.parameters()).device
            inputs = encode_texts(self.tokenizer, texts, self.pooling, device)
        self.compute_cavs(sets, processes=processes)
        sens = self._sensitivities(inputs, target, additional_forward_args, kwargs)
        scores: dict[str, dict[str, dict[str, Tensor]]] = {}
        # Captum fills the result with the sets sorted by size (numpy's argsort of the sizes),
        # so its keys come in that order
        by_size = [sets[i] for i in np.argsort(np.array([len(c) for c in sets], dtype=object))]
        for layer, s in zip(self.layers, sens):
            for concepts in by_size:
                key = concepts_to_str(concepts)
                stats = self.cavs[key][layer].stats or {}
                w = torch.as_tensor(stats["weights"]).to(s.device, s.dtype)
                if w.shape[1] != s.shape[1]:
                    raise InputError(
                        f"The CAVs at {layer!r} have {w.shape[1]} features but the inputs' "
                        f"sensitivities have {s.shape[1]}: the inputs must give the layer the "
                        "activation shape the concept examples gave (for texts, use a tokenizer)."
                    )
                classes = [int(c) for c in torch.as_tensor(stats["classes"]).reshape(-1)]
                order = torch.tensor([classes.index(c.id) for c in concepts], device=s.device)
                tcav = (s @ w.T).index_select(1, order)  # (N, C)
                positive = (tcav > 0).to(s.dtype)
                scores.setdefault(key, {})[layer] = {
                    "sign_count": positive.mean(0),
                    # the documented share of positive mass; 0 where every score is 0
                    "magnitude": _share((tcav * positive).sum(0), tcav.abs().sum(0)),
                }
        return scores


def _share(part: Tensor, whole: Tensor) -> Tensor:
    """``part / whole``, 0 where ``whole`` is 0 (every score 0: no positive share)."""
    return torch.where(whole > 0, part / torch.where(whole > 0, whole, 1), torch.zeros_like(part))
