"""A vLLM server as a :class:`~llmattr.text.remote.RemoteLLMProvider` (Captum's ``VLLMProvider``).

The server is reached through its OpenAI-compatible completions API with the ``openai`` client,
an optional dependency: ``llmattr`` imports without it, and building a provider without it raises
an ImportError that says how to install it.

Log-probabilities come from vLLM's ``prompt_logprobs`` extension: the prompt followed by the
target is sent, and the log-probability vLLM reports for each of the last ``t`` prompt tokens
(``t`` = the target's length under the local tokenizer) is returned.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .._core.errors import InputError
from .remote import RemoteLLMProvider

__all__ = ["VLLMProvider"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "The 'openai' package is required to use VLLMProvider. Install it with "
    "`pip install openai` or `pip install llmattr[remote]` (openai >= 1)."
)


def _is_connection_error(err: BaseException) -> bool:
    """True for a failure to reach the server: the builtin ConnectionError, or the openai
    client's APIConnectionError (which does not subclass it) and its timeout subclass."""
    if isinstance(err, ConnectionError):
        return True
    try:
        from openai import APIConnectionError
    except ImportError:  # pragma: no cover - openai is present whenever a client exists
        return False
    return isinstance(err, APIConnectionError)


class VLLMProvider(RemoteLLMProvider):
    """A model served by vLLM, asked for generations and target log-probabilities.

    Args:
        api_url: the server's OpenAI-compatible base URL, e.g. ``"http://host:8000/v1"``.
        model_name: the served model to ask; None takes the first model the server lists.
        send_token_ids: llmattr's addition (keyword only, default False = Captum's behaviour).
            False sends ``input_prompt + target_str`` as text, so the server tokenizes the
            joint string; where a token merges across the boundary (a prompt ending inside a
            word, a target without its leading space), the last ``t`` log-probs belong to
            other tokens. True sends token ids: ``tokenizer.encode(input_prompt)`` (special
            tokens added, as vLLM does for text) followed by ``tokenizer.encode(target_str,
            add_special_tokens=False)``, so each log-prob is that of the target's own token.

    The API key is ``$OPENAI_API_KEY``, or ``"EMPTY"`` when it is not set (vLLM's default).

    Raises:
        ImportError: the ``openai`` package is not installed.
        ValueError: ``api_url`` is empty, or the server lists no model (``model_name`` None).
        ConnectionError: the server cannot be reached while listing its models.
        RuntimeError: any other failure while building the client or listing models.
    """

    model_name: str

    def __init__(
        self, api_url: str, model_name: str | None = None, *, send_token_ids: bool = False
    ) -> None:
        try:
            from openai import OpenAI
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err
        if not isinstance(api_url, str):
            raise TypeError(f"api_url must be a string URL, got {type(api_url).__name__}.")
        if not api_url.strip():
            raise ValueError("API URL is required: give the vLLM server's base URL.")
        self.api_url = api_url
        self.send_token_ids = bool(send_token_ids)
        try:
            self.client = OpenAI(base_url=api_url, api_key=os.getenv("OPENAI_API_KEY", "EMPTY"))
            if model_name is None:
                # one request: the server's model list; its first entry is the served model
                models = self.client.models.list().data
                if not models:
                    raise ValueError("No models available from the vLLM API at " + api_url)
                self.model_name = models[0].id
                logger.info("VLLMProvider: no model_name given, using %s", self.model_name)
            else:
                self.model_name = model_name
        except ValueError:
            raise
        except Exception as err:
            if _is_connection_error(err):
                raise ConnectionError(f"Failed to connect to vLLM API: {err}") from err
            raise RuntimeError(f"Unexpected error while initializing vLLM provider: {err}") from err

    # ---- generation ------------------------------------------------------------------------

    def generate(self, prompt: str, **gen_args: Any) -> str:
        """The text the server generates after ``prompt``.

        Args:
            prompt: the prompt text.
            **gen_args: OpenAI completions arguments (``temperature``, ``top_p``, ...);
                ``max_new_tokens`` is read as ``max_tokens`` (default 25 new tokens);
                ``do_sample=False`` asks for greedy decoding (``temperature=0``) unless a
                temperature is given; ``do_sample=True`` is dropped (the server samples).

        Returns:
            The generated text (the first choice's).

        Raises:
            KeyError: the response has no choices.
            ConnectionError: the server cannot be reached.
            RuntimeError: any other failure of the request.
        """
        args = dict(gen_args)  # never change what the caller passed
        if "max_tokens" not in args:
            args["max_tokens"] = args.pop("max_new_tokens", 25)
        elif "max_new_tokens" in args:
            raise InputError("Give max_tokens or max_new_tokens, not both.")
        do_sample = args.pop("do_sample", None)
        # HF's do_sample=False is greedy decoding; the server's own default temperature is 1
        if do_sample is False and args.get("temperature") is None:
            args["temperature"] = 0.0
        try:
            response = self.client.completions.create(model=self.model_name, prompt=prompt, **args)
            choices = getattr(response, "choices", None)
            if not choices:
                raise KeyError("API response missing expected 'choices' data")
            return str(choices[0].text)
        except KeyError:
            raise
        except Exception as err:
            if _is_connection_error(err):
                raise ConnectionError(f"Failed to connect to vLLM API: {err}") from err
            raise RuntimeError(f"Unexpected error during text generation: {err}") from err

    # ---- scoring ---------------------------------------------------------------------------

    def get_logprobs(
        self, input_prompt: str, target_str: str, tokenizer: Any | None = None
    ) -> list[float]:
        """``log p`` of each token of ``target_str`` after ``input_prompt``, as the server
        computes it for the prompt ``input_prompt + target_str`` (text; token ids with
        ``send_token_ids=True``).

        Args:
            input_prompt: the prompt text.
            target_str: the target text (appended to the prompt as is).
            tokenizer: the served model's tokenizer; ``t = len(tokenizer.encode(target_str,
                add_special_tokens=False))`` target tokens are read. Required.

        Returns:
            ``t`` floats: the log-probabilities of the last ``t`` prompt tokens.

        Raises:
            ValueError: no tokenizer, an empty target, an empty entry in the server's
                ``prompt_logprobs``, an entry with more than one token, or fewer than ``t``
                entries.
            KeyError: the response has no choices or no ``prompt_logprobs``.
            IndexError: an entry of ``prompt_logprobs`` has an unexpected layout.
            ConnectionError: the server cannot be reached.
            RuntimeError: any other failure of the request.
        """
        if tokenizer is None:
            raise ValueError("Tokenizer is required for vLLM provider: pass the model's one.")
        if not target_str:
            raise ValueError("Target string cannot be empty.")
        target_ids = list(tokenizer.encode(target_str, add_special_tokens=False))
        n_target = len(target_ids)
        prompt: str | list[int] = input_prompt + target_str
        if self.send_token_ids:
            # vLLM accepts a prompt of token ids: no re-tokenization across the boundary
            prompt = list(tokenizer.encode(input_prompt)) + target_ids
        try:
            response = self.client.completions.create(
                model=self.model_name,
                prompt=prompt,
                temperature=0.0,
                max_tokens=1,
                # vLLM's extension: 0 = only the log-prob of each prompt token itself
                extra_body={"prompt_logprobs": 0},
            )
        except Exception as err:
            if _is_connection_error(err):
                raise ConnectionError(
                    f"Failed to connect to vLLM API when getting logprobs: {err}"
                ) from err
            raise RuntimeError(f"Unexpected error while getting log probabilities: {err}") from err
        return _target_logprobs(response, n_target)


def _target_logprobs(response: Any, n_target: int) -> list[float]:
    """The last ``n_target`` entries of the first choice's ``prompt_logprobs``; each entry maps
    the prompt token's id to ``{"logprob": float, ...}``."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise KeyError("API response missing expected 'choices' data")
    prompt_logprobs = getattr(choices[0], "prompt_logprobs", None)
    if not prompt_logprobs:
        raise KeyError(
            "API response missing 'prompt_logprobs' data (is the server vLLM, which supports "
            "the prompt_logprobs extension?)"
        )
    out: list[float] = []
    for entry in prompt_logprobs[-n_target:]:
        if not entry:  # vLLM gives None for the first prompt token: the target covers it all
            raise ValueError("Empty probability data in API response")
        if len(entry) != 1:
            raise ValueError(
                f"Expected exactly one token in each prompt_logprobs entry, got {len(entry)}."
            )
        try:
            out.append(float(next(iter(entry.values()))["logprob"]))
        except (IndexError, KeyError, TypeError, AttributeError) as err:
            raise IndexError(f"Unexpected format in log probability data: {err}") from err
    if len(out) != n_target:
        raise ValueError(f"Not enough logprobs received: expected {n_target}, got {len(out)}")
    return out
