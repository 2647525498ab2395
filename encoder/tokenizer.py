"""Tokenization with the `tokenizers` library, straight to the packed form the encoder runs on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Encoding
from tokenizers import Tokenizer as HFTokenizer

from .errors import ModelLoadError
from .packing import pack

# a text longer than max_length * this many characters is tokenized from its prefix first (see Tokenizer.encode)
CUT_CHARS_PER_TOKEN = 32


class Tokenizer:
    """Wraps ``tokenizer.json``: [CLS] text [SEP] per text, truncation at ``max_length`` keeping [SEP].

    ``backend`` is set up once here (no padding, no truncation) and only read afterwards, by this class and by
    callers that tokenize with it directly (the chunker): reconfiguring it would change what other threads get."""

    def __init__(self, tokenizer: HFTokenizer, model_max_length: int = 8192, source_folder: Path | None = None):
        self.backend = tokenizer
        self.source_folder = source_folder  # its tokenizer_config.json etc. are copied when the model is saved
        self.backend.no_padding()
        self.backend.no_truncation()
        self.model_max_length = model_max_length
        self.cls_token_id = self._special_id("[CLS]")
        self.sep_token_id = self._special_id("[SEP]")
        self.mask_token_id = self._special_id("[MASK]")
        self.pad_token_id = self._special_id("[PAD]")
        self.mask_token = "[MASK]"

    def _special_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @classmethod
    def from_folder(cls, folder: str | Path, model_max_length: int | None = None) -> "Tokenizer":
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        if model_max_length is None and config_path.exists():
            try:
                tokenizer_config = json.loads(config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ModelLoadError(f"{config_path} is not valid JSON: {error}") from None
            if not isinstance(tokenizer_config, dict):
                raise ModelLoadError(f"{config_path} holds a {type(tokenizer_config).__name__}, not a JSON object")
            model_max_length = tokenizer_config.get("model_max_length")
        if not isinstance(model_max_length, int) or model_max_length > 1_000_000:
            model_max_length = 8192
        if not (folder / "tokenizer.json").exists():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        try:
            backend = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:  # the tokenizers library raises its own Exception for any malformed file
            raise ModelLoadError(f"cannot read {folder / 'tokenizer.json'}: {str(error).splitlines()[0]}") from None
        return cls(backend, model_max_length, folder)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], max_length: int | None = None,
               add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids per text. ``max_length`` (default: the model's) counts [CLS] and [SEP]. A ``max_length`` given
        is the length used, above ``model_max_length`` too, as Hugging Face tokenizers and sentence-transformers'
        ``max_seq_length`` do: ``model_max_length`` is only the default (a head caps its lengths at its backbone's
        positions itself).

        Several threads may call this at once: the backend is only read, never reconfigured (truncation enabled
        on it around each call would let one thread encode with another thread's length). A text is cut here as
        the backend's own truncation cuts it: the text's tokens are kept up to the room the special tokens leave,
        and the special tokens the post-processor put around them stay.

        A text longer than ``max_length * CUT_CHARS_PER_TOKEN`` characters is first tokenized from that prefix only
        (a multi-megabyte line tokenized whole costs seconds and gigabytes); its tokens are used only when the room
        is filled by words that end before the last two words of the prefix (words as the pre-tokenizer splits them: tokens never cross them,
        and only the words at the cut can differ from the whole text's), else the text is tokenized whole. The ids
        are those of the whole text either way."""
        check_texts(texts)
        limit = max_length or self.model_max_length
        if limit < 3:
            raise ValueError(f"max_length must be at least 3 ([CLS] + a token + [SEP]), got {limit}")
        texts = list(texts)
        cut = limit * CUT_CHARS_PER_TOKEN
        encodings = self.backend.encode_batch([t[:cut] for t in texts], add_special_tokens=add_special_tokens)
        again = [i for i, (t, e) in enumerate(zip(texts, encodings)) if len(t) > cut and not _prefix_suffices(e, limit)]
        if again:
            for i, e in zip(again, self.backend.encode_batch([texts[i] for i in again],
                                                             add_special_tokens=add_special_tokens)):
                encodings[i] = e
        if not add_special_tokens:
            return [e.ids[:limit] for e in encodings]
        return [e.ids if len(e.ids) <= limit else _truncated(e, limit) for e in encodings]

    def pack(self, texts: Sequence[str], max_length: int | None = None,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids (total,), cu_seqlens (n+1,)): the encoder's input, no padding."""
        return pack(self.encode(texts, max_length), device)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, folder: str | Path) -> None:
        self.backend.save(str(Path(folder) / "tokenizer.json"))


def _prefix_suffices(encoding: Encoding, limit: int) -> bool:
    """Whether the ``limit`` ids kept of a text's prefix are those of the whole text: the text's tokens kept (the
    room its special tokens leave) all belong to words before the prefix's last two."""
    words = [w for w, s in zip(encoding.word_ids, encoding.sequence_ids) if s == 0]
    room = limit - (len(encoding.ids) - len(words))
    if room >= len(words) or room < 1 or any(w is None for w in words[:room]) or words[-1] is None:
        return False
    return words[room - 1] < words[-1] - 1


def _truncated(encoding: Encoding, limit: int) -> list[int]:
    """``limit`` ids of a post-processed text: its special tokens, and as many of the text's own tokens (those of
    sequence 0, between the special tokens) as fit beside them, the last ones dropped."""
    ids, sequence = encoding.ids, encoding.sequence_ids
    start = sequence.index(0)
    end = len(sequence) - sequence[::-1].index(0)
    room = limit - (len(ids) - (end - start))
    return ids[:start] + ids[start:start + room] + ids[end:]


def check_texts(texts: Sequence[str]) -> None:
    """Clear errors for the usual mistakes: one string instead of a list, None or non-str entries."""
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a single string; wrap it in a list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
