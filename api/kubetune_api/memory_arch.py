"""Encoder (BERT, DistilBERT, ELECTRA, RoBERTa, DeBERTa-v2/v3) and encoder-decoder (T5, mT5, BART, Pegasus) shapes
for the memory planner (``kubetune_api.memory``).

The Llama-style decoder lives in ``memory.ModelShape``; the families here
answer the same questions (parameters by method, activations per token, the
logits) for the model class the trainer builds for the task (``tasks.fitting_tasks``:
the encoders are sequence-classification only, the encoder-decoders seq2seq or
sequence-classification, Pegasus seq2seq only): ``BertForSequenceClassification``,
``DistilBertForSequenceClassification``, ``ElectraForSequenceClassification``,
``RobertaForSequenceClassification`` (and XLM-R's), ``DebertaV2ForSequenceClassification``,
``T5ForConditionalGeneration`` / ``T5ForSequenceClassification`` (and mT5's), ``BartForConditionalGeneration`` /
``BartForSequenceClassification``, ``PegasusForConditionalGeneration``. Module names are
transformers', so PEFT's ``target_modules`` match them the way PEFT does (a
listed name equals a module's path or ends it after a dot).

Counts are checked against the models transformers builds and PEFT's own
trainable counts (tests/api/test_memory_plan_arch.py, test_memory_plan_families.py,
test_memory_plan_more_families.py); activations against measured peaks (bench/memory_plan.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .memory import Job, ParameterCount, PlanError

# PEFT's defaults for these families (peft.utils.constants): IA3 targets and feed-forward modules,
# and the modules a SEQ_CLS model always trains and saves with the adapter.
# (xlm-roberta, distilbert, electra and pegasus have none there: PEFT asks for target_modules)
IA3_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "roberta": (("key", "value", "output.dense"), ("output.dense",)),
    "t5": (("k", "v", "wo"), ("wo",)),
    "bart": (("q_proj", "v_proj", "fc2"), ("fc2",)),
    "deberta-v2": (("key_proj", "value_proj", "output.dense"), ("output.dense",)),
    "mt5": (("k", "v", "wi_1"), ()),
}
SEQ_CLS_SAVED = ("classifier", "score")

TASKS = ("causal-lm", "seq2seq", "sequence-classification")


@dataclass(frozen=True)
class Linear:
    """One kind of linear layer: its path (inside its block, or in the model), features, how many the model has."""

    path: str
    fin: int
    fout: int
    count: int
    bias: bool = False
    output: bool = False  # the output layer (lm_head): never in PEFT's all-linear

    @property
    def parameters(self) -> int:
        return self.count * (self.fin * self.fout + (self.fout if self.bias else 0))


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)


class Architecture:
    """What the planner needs from a model that is not a Llama-style decoder."""

    model_type: str
    task: str
    hidden_size: int
    vocab_size: int
    num_labels: int

    @property
    def num_layers(self) -> int:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def linears(self) -> list[Linear]:
        raise NotImplementedError

    def parameters(self) -> int:
        raise NotImplementedError

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def largest_layer_parameters(self) -> int:
        raise NotImplementedError

    def largest_linear(self) -> int:
        return max(lin.fin * lin.fout for lin in self.linears())

    def frozen_parameters(self) -> int:
        """Parameters the model itself never trains (requires_grad False: fixed sinusoidal positions)."""
        return 0

    def saved_modules(self) -> dict[str, int]:
        """Modules PEFT trains whole for this task (name -> parameters), with any method."""
        return {}

    def module_parameters(self, name: str) -> int | None:
        """Parameters of a module named in modules_to_save, None when the model has none by that name."""
        return None

    def prompt_parameters(self, job: Job) -> int:
        return job.num_virtual_tokens * self.hidden_size

    def prefix_layers(self) -> int:
        return self.num_layers

    def activation_bytes(self, job: Job, micro_batch: int, wb: int, checkpointing: bool) -> tuple[float, float]:
        """(bytes kept for backward through the step, bytes of the one layer recomputed at a time)."""
        raise NotImplementedError

    def logit_elements(self, job: Job, micro_batch: int) -> float:
        raise NotImplementedError

    def lm_head_trainable(self, job: Job) -> bool:
        return False

    # ------------------------------------------------------------ by method
    def lora_layers(self, targets: Iterable[str]) -> list[Linear]:
        targets = list(targets)
        saved = set(self.saved_modules())  # trained whole: PEFT adapts nothing inside them

        def outside(x: Linear) -> bool:
            return not set(x.path.split(".")) & saved

        if targets == ["all-linear"]:
            return [x for x in self.linears() if not x.output and outside(x)]
        unknown = [t for t in targets if not any(_matches(x.path, t) for x in self.linears())]
        if unknown:
            names = sorted({x.path.split(".")[-1] for x in self.linears()})
            raise PlanError(f"method.lora.targetModules {unknown} are not linear layers of a {self.model_type} model "
                            f"(its layers: {', '.join(names)}); use those names or [all-linear]")
        return [x for x in self.linears() if outside(x) and any(_matches(x.path, t) for t in targets)]

    def count(self, job: Job) -> ParameterCount:
        total = self.parameters()
        if job.method == "full":
            return ParameterCount(total, total - self.frozen_parameters(), 0)
        saved = sum(self.saved_modules().values())
        adapter = 0
        if job.method in ("lora", "qlora"):
            for x in self.lora_layers(job.lora_targets):
                adapter += x.count * (job.lora_r * (x.fin + x.fout) + (x.fout if job.use_dora else 0))
            for name in job.modules_to_save:
                n = self.module_parameters(name)
                if n is not None and name not in self.saved_modules():
                    saved += n
        elif job.method == "prompt-tuning":
            adapter = self.prompt_parameters(job)
        elif job.method == "prefix-tuning":
            kv = self.prefix_layers() * 2 * self.hidden_size
            if job.prefix_projection:
                h = self.hidden_size
                adapter = job.num_virtual_tokens * h + (h * h + h) + (h * kv + kv)
            else:
                adapter = job.num_virtual_tokens * kv
        elif job.method == "ia3":
            if self.model_type not in IA3_DEFAULTS and job.ia3_targets is None:
                raise PlanError(f"method.ia3.targetModules: PEFT has no default IA3 modules for {self.model_type}; "
                                "list them (and method.ia3.feedforwardModules)")
            targets, feedforward = IA3_DEFAULTS.get(self.model_type, ((), ()))
            if job.ia3_targets is not None:
                targets = tuple(job.ia3_targets)
            for t in targets:
                hit = [x for x in self.linears() if _matches(x.path, t)]
                if not hit:
                    names = sorted({x.path.split(".")[-1] for x in self.linears()})
                    raise PlanError(f"method.ia3.targetModules: {t!r} is not a linear layer of a {self.model_type} "
                                    f"model (its layers: {', '.join(names)})")
            for x in self.linears():
                if any(_matches(x.path, t) for t in targets):
                    ff = any(_matches(x.path, f) for f in feedforward)
                    adapter += x.count * (x.fin if ff else x.fout)
        else:
            raise PlanError(f"unknown method.type {job.method!r}")
        return ParameterCount(total, adapter + saved, adapter, saved_copies=saved)

    def _lora_extra(self, job: Job, paths: Iterable[str]) -> float:
        """Elements per token a LoRA adapter adds in one block: dropout output and rank-r intermediate per module."""
        if job.method not in ("lora", "qlora"):
            return 0.0
        chosen = {x.path: x for x in self.lora_layers(job.lora_targets)}
        n = 0.0
        for p in paths:
            if p in chosen:
                n += job.lora_r + (chosen[p].fin if job.lora_dropout > 0 else 0)
        return n


def num_labels_of(config: Mapping[str, Any], num_labels: int | None) -> int:
    """The classes of a classification head: the job's labels, else the config's id2label, else num_labels, else
    transformers' default (2; BartConfig's 3)."""
    if num_labels is not None:
        return num_labels
    if config.get("id2label"):
        return len(config["id2label"])
    return int(config.get("num_labels", 3 if config.get("model_type") == "bart" else 2))


# ------------------------------------------------------------------ BERT
@dataclass(frozen=True)
class BertShape(Architecture):
    """``BertForSequenceClassification``: embeddings (word, position, token type, LayerNorm), post-LN layers
    (query/key/value/output dense with biases, GELU MLP with biases), the pooler and the classifier."""

    model_type: str
    task: str
    vocab_size: int
    hidden_size: int
    layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    num_labels: int
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    @property
    def num_layers(self) -> int:
        return self.layers

    def describe(self) -> str:
        return f"{self.layers} layers, hidden {self.hidden_size}, vocabulary {self.vocab_size}, {self.num_labels} classes"

    # Module names of each layer's query, key, value, attention output, MLP in and MLP out, then of the head's
    # hidden x hidden and hidden x classes linears (all biased).
    linear_names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense", "pooler.dense", "classifier")

    def linears(self) -> list[Linear]:
        h, i, n = self.hidden_size, self.intermediate_size, self.layers
        q, k, v, o, up, down, dense, out = self.linear_names
        return [
            Linear(q, h, h, n, True), Linear(k, h, h, n, True), Linear(v, h, h, n, True), Linear(o, h, h, n, True),
            Linear(up, h, i, n, True), Linear(down, i, h, n, True),
            Linear(dense, h, h, 1, True), Linear(out, h, self.num_labels, 1, True),
        ]

    def layer_parameters(self) -> int:
        return sum(x.parameters for x in self.linears() if x.count == self.layers) // self.layers + 4 * self.hidden_size

    def parameters(self) -> int:
        h = self.hidden_size
        embeddings = (self.vocab_size + self.max_positions + self.type_vocab_size) * h + 2 * h
        heads = sum(x.parameters for x in self.linears() if x.count == 1)
        return embeddings + self.layers * self.layer_parameters() + heads

    def largest_layer_parameters(self) -> int:
        return max(self.embedding_parameters(), self.layer_parameters())

    def saved_modules(self) -> dict[str, int]:
        return {"classifier": self.hidden_size * self.num_labels + self.num_labels}

    def module_parameters(self, name: str) -> int | None:
        h = self.hidden_size
        return {"classifier": h * self.num_labels + self.num_labels, "pooler": h * h + h,
                "word_embeddings": self.vocab_size * h}.get(name)

    # hidden dropouts per layer (BERT: after the attention output and after the MLP)
    layer_dropouts = 2

    def _layer_elements(self, job: Job, seq: int) -> float:
        """Elements kept per token by one layer without checkpointing (see activation_bytes)."""
        h, i = self.hidden_size, self.intermediate_size
        n = 8.0 * h + 2 * i
        if self.hidden_dropout > 0:
            n += self.layer_dropouts * h  # each dropout: mask and output
        if job.device == "cpu" and self.attention_dropout > 0:
            n += 3 * self.num_heads * seq  # the math attention: probabilities, dropout mask and output
        paths = [x.path for x in self.linears() if x.count == self.layers]
        return n + self._lora_extra(job, paths)

    def activation_bytes(self, job: Job, micro_batch: int, wb: int, checkpointing: bool) -> tuple[float, float]:
        """Post-LN BERT layer, per token: the input (h), q, k, v (3h), the attention output (h), the first
        LayerNorm's input and output (2h), the MLP's dense and GELU outputs (2i), the second LayerNorm's input
        (h); its output is the next layer's input; each hidden dropout keeps about one element per element
        (mask and output). Attention: on a GPU, SDPA's fused kernels (dropout inside, no score matrix); on a
        CPU with attention dropout, PyTorch falls back to the math kernel, which keeps heads x sequence
        probabilities, dropout mask and dropped probabilities. Embeddings: their sum, LayerNorm and dropout
        (3h). The pooler and classifier see one token per sequence. Measured with saved-tensor hooks and
        bench/memory_plan.py."""
        seq = job.seq_length + (job.num_virtual_tokens if job.method == "prompt-tuning" else 0)
        tokens = micro_batch * seq
        per_layer = self._layer_elements(job, seq) * wb * tokens
        h = self.hidden_size
        kept = self.layers * (h * wb * tokens if checkpointing else per_layer) + self._embedding_elements() * wb * tokens
        return kept, per_layer if checkpointing else 0.0

    def _embedding_elements(self) -> float:
        """Elements per token the embeddings keep: their sum, LayerNorm and dropout."""
        return 3.0 * self.hidden_size

    def logit_elements(self, job: Job, micro_batch: int) -> float:
        return float(micro_batch * self.num_labels)


# ------------------------------------------------------------------ DistilBERT
@dataclass(frozen=True)
class DistilBertShape(BertShape):
    """``DistilBertForSequenceClassification``: word and position embeddings (learned, or fixed sinusoidal values
    in the same trainable table with ``sinusoidal_pos_embds``: transformers 5 copies them in without freezing it),
    no token types, a LayerNorm; post-LN layers with biased ``attention.q_lin``/``k_lin``/``v_lin``/``out_lin``,
    ``sa_layer_norm``, ``ffn.lin1``/``ffn.lin2`` (GELU) and ``output_layer_norm``; no pooler; the head is
    ``pre_classifier`` (dim x dim, ReLU) and ``classifier`` (dim x classes) on the first token. PEFT's SEQ_CLS saves
    both whole: it matches its ``classifier`` against the end of each module's name, and ``pre_classifier`` ends
    so; the trainer keeps LoRA off both (all-linear adapts the attention and MLP layers only). Its layers have one
    hidden dropout (after the MLP), BERT's two. Refused as PEFT 0.21 refuses them: prompt and prefix tuning (no
    hidden_size in the config), IA3 without target modules (no default for distilbert)."""

    layer_dropouts = 1
    linear_names = ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2",
                    "pre_classifier", "classifier")

    def saved_modules(self) -> dict[str, int]:
        h = self.hidden_size
        return {"pre_classifier": h * h + h, "classifier": h * self.num_labels + self.num_labels}

    def module_parameters(self, name: str) -> int | None:
        return {**self.saved_modules(), "word_embeddings": self.vocab_size * self.hidden_size}.get(name)

    def count(self, job: Job) -> ParameterCount:
        if job.method in ("prompt-tuning", "prefix-tuning"):
            # PEFT reads the width from the config's hidden_size, which DistilBertConfig calls dim, and stops
            raise PlanError(f"method.type {job.method} fails on a distilbert model in PEFT (it looks for hidden_size, "
                            "which DistilBERT's config calls dim, and asks for token_dim); use lora or full")
        return super().count(job)

    def _embedding_elements(self) -> float:
        return (3.0 if self.hidden_dropout > 0 else 2.0) * self.hidden_size


# ------------------------------------------------------------------ RoBERTa
@dataclass(frozen=True)
class RobertaShape(BertShape):
    """``RobertaForSequenceClassification`` (and ``XLMRobertaForSequenceClassification``, the same modules): BERT's
    embeddings (positions counted from padding_idx + 1, hence max_position_embeddings 514 in the published
    configs; one token type) and layers, no pooler, and the ``classifier`` head: ``classifier.dense`` (hidden x
    hidden, tanh) and ``classifier.out_proj`` (hidden x classes), both with biases, on the first token. PEFT's
    SEQ_CLS saves ``classifier`` whole, and ``all-linear`` adapts nothing inside it."""

    def linears(self) -> list[Linear]:
        h = self.hidden_size
        layers = [x for x in super().linears() if x.count == self.layers]
        return layers + [Linear("classifier.dense", h, h, 1, True), Linear("classifier.out_proj", h, self.num_labels, 1, True)]

    def _head(self) -> int:
        h = self.hidden_size
        return h * h + h + h * self.num_labels + self.num_labels

    def saved_modules(self) -> dict[str, int]:
        return {"classifier": self._head()}

    def module_parameters(self, name: str) -> int | None:
        return {"classifier": self._head(), "word_embeddings": self.vocab_size * self.hidden_size}.get(name)


# ------------------------------------------------------------------ ELECTRA
@dataclass(frozen=True)
class ElectraShape(RobertaShape):
    """``ElectraForSequenceClassification`` (the discriminator): BERT's embeddings (word, position, token type,
    LayerNorm) at ``embedding_size``, projected to hidden by ``embeddings_project`` (biased) when the two differ
    (electra-small: 128 -> 256), BERT's layers, no pooler, and RoBERTa's ``classifier`` head (``classifier.dense``
    with GELU, ``classifier.out_proj``), which PEFT saves whole."""

    embedding_size: int = 0  # 0: hidden_size

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def linears(self) -> list[Linear]:
        out = super().linears()
        if self.embedding_width != self.hidden_size:
            out.append(Linear("embeddings_project", self.embedding_width, self.hidden_size, 1, True))
        return out

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.embedding_width

    def parameters(self) -> int:
        e = self.embedding_width
        embeddings = (self.vocab_size + self.max_positions + self.type_vocab_size) * e + 2 * e
        rest = sum(x.parameters for x in self.linears() if x.count == 1)  # the projection and the head
        return embeddings + self.layers * self.layer_parameters() + rest

    def module_parameters(self, name: str) -> int | None:
        if name == "word_embeddings":
            return self.embedding_parameters()
        return super().module_parameters(name)

    def _embedding_elements(self) -> float:
        e, h = self.embedding_width, self.hidden_size
        return 3.0 * e + (h if e != h else 0)  # + the projection's output (the first layer's input)


# ------------------------------------------------------------------ DeBERTa-v2/v3
@dataclass(frozen=True)
class DebertaV2Shape(Architecture):
    """``DebertaV2ForSequenceClassification`` (DeBERTa-v2 and v3, model_type deberta-v2): word embeddings of
    ``embedding_size`` (projected to hidden by ``embed_proj`` when they differ), absolute positions only with
    ``position_biased_input``, token types only when ``type_vocab_size`` > 0, a LayerNorm; post-LN layers with
    biased query_proj/key_proj/value_proj (plus pos_key_proj/pos_query_proj for c2p/p2c unless
    ``share_att_key``), ``attention.output.dense``, ``intermediate.dense``, ``output.dense``; the encoder's
    relative position embeddings (2 x position_buckets rows, or 2 x max_relative_positions without buckets) with
    their LayerNorm (``norm_rel_ebd: layer_norm``), an optional convolution after the first layer
    (``conv_kernel_size``); the ContextPooler (``pooler.dense``) and the ``classifier`` (hidden x classes), which
    PEFT saves whole."""

    model_type: str
    task: str
    vocab_size: int
    hidden_size: int
    layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    embedding_size: int
    max_positions: int
    position_biased_input: bool
    type_vocab_size: int
    relative_attention: bool
    position_span: int  # att_span: position_buckets, else max_relative_positions (else max_position_embeddings)
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    norm_rel_ebd: bool
    conv_kernel_size: int
    conv_groups: int
    pooler_hidden_size: int
    num_labels: int
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1

    @property
    def num_layers(self) -> int:
        return self.layers

    @property
    def all_head(self) -> int:
        return self.num_heads * self.head_size

    def describe(self) -> str:
        rel = (f", relative attention {'|'.join(self.pos_att_type) or 'none'} over {2 * self.position_span} positions"
               if self.relative_attention else "")
        return (f"{self.layers} layers, hidden {self.hidden_size}, vocabulary {self.vocab_size}{rel}, "
                f"{self.num_labels} classes")

    def _pos_projections(self) -> tuple[str, ...]:
        if not self.relative_attention or self.share_att_key:
            return ()
        return tuple(name for kind, name in (("c2p", "pos_key_proj"), ("p2c", "pos_query_proj"))
                     if kind in self.pos_att_type)

    def linears(self) -> list[Linear]:
        h, a, i, n = self.hidden_size, self.all_head, self.intermediate_size, self.layers
        out = [Linear(f"attention.self.{p}", h, a, n, True) for p in ("query_proj", "key_proj", "value_proj")]
        out += [Linear(f"attention.self.{p}", h, a, n, True) for p in self._pos_projections()]
        out += [Linear("attention.output.dense", a, h, n, True), Linear("intermediate.dense", h, i, n, True),
                Linear("output.dense", i, h, n, True)]
        if self.embedding_size != h:
            out.append(Linear("embeddings.embed_proj", self.embedding_size, h, 1))
        p = self.pooler_hidden_size
        return out + [Linear("pooler.dense", p, p, 1, True), Linear("classifier", h, self.num_labels, 1, True)]

    def layer_parameters(self) -> int:
        return sum(x.parameters // x.count for x in self.linears() if x.path.startswith(("attention", "intermediate",
                                                                                          "output"))) + 4 * self.hidden_size

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.embedding_size

    def parameters(self) -> int:
        h, e = self.hidden_size, self.embedding_size
        n = self.embedding_parameters() + 2 * h  # + the embeddings' LayerNorm
        n += (self.max_positions * e if self.position_biased_input else 0) + self.type_vocab_size * e
        n += self.layers * self.layer_parameters()
        if self.relative_attention:
            n += 2 * self.position_span * h + (2 * h if self.norm_rel_ebd else 0)
        if self.conv_kernel_size > 0:
            n += h * (h // self.conv_groups) * self.conv_kernel_size + h + 2 * h
        return n + sum(x.parameters for x in self.linears() if not x.path.startswith(("attention", "intermediate",
                                                                                        "output")))

    def largest_layer_parameters(self) -> int:
        return max(self.embedding_parameters(), self.layer_parameters())

    def saved_modules(self) -> dict[str, int]:
        return {"classifier": self.hidden_size * self.num_labels + self.num_labels}

    def module_parameters(self, name: str) -> int | None:
        h, p = self.hidden_size, self.pooler_hidden_size
        return {"classifier": h * self.num_labels + self.num_labels, "pooler": p * p + p,
                "word_embeddings": self.embedding_parameters()}.get(name)

    def _layer_bytes(self, job: Job, micro_batch: int, seq: int, wb: int) -> float:
        """Bytes one layer keeps for backward without checkpointing (see activation_bytes)."""
        h, i, heads = self.hidden_size, self.intermediate_size, self.num_heads
        tokens = micro_batch * seq
        drop = 1.0 if self.hidden_dropout > 0 else 0.0
        p2c = self.relative_attention and "p2c" in self.pos_att_type
        c2p = self.relative_attention and "c2p" in self.pos_att_type
        per_token = 9.0 * h + 2 * i + 2 * drop * h + (h if p2c else 0)
        per_token += self._lora_extra(job, [x.path for x in self.linears() if x.count == self.layers])
        scores = (3.0 if self.attention_dropout > 0 else 1.0) * heads * seq  # softmax output, dropout noise, dropped
        n = (per_token + scores) * wb * tokens + micro_batch * seq * seq  # + the boolean attention mask
        if self.relative_attention:
            span = 2 * self.position_span
            n += (int(c2p) + int(p2c)) * micro_batch * span * h * wb  # position keys/queries, repeated per sequence
            # the c2p / p2c scores before their gather (torch.gather keeps its input): heads x query x 2 att_span
            n += (int(c2p) + int(p2c)) * micro_batch * heads * seq * span * wb
            n += (1 + drop) * span * h * wb  # the relative embeddings after their dropout (and its noise)
            n += (int(c2p) + int(p2c)) * seq * seq * 8  # gather indices (int64) of c2p and p2c
        return n

    def activation_bytes(self, job: Job, micro_batch: int, wb: int, checkpointing: bool) -> tuple[float, float]:
        """Per token per layer, from DisentangledSelfAttention in transformers 5 (no SDPA: DeBERTa always runs its own
        attention, on a GPU too) and saved-tensor hooks: BERT's 8 x hidden + 2 x intermediate (layer input, q, k, v,
        the context, the LayerNorms' inputs and output), the scaled key (and the key itself, which p2c multiplies),
        one element per element of each hidden dropout; per query the heads x keys softmax output, dropout noise and
        dropped probabilities, and the c2p and p2c scores against every relative position (heads x 2 att_span, kept
        whole by the gather that picks each pair's bucket); per layer the boolean mask (sequence x sequence per row),
        the position keys and queries (c2p, p2c: 2 x att_span rows x hidden, repeated for each sequence), the dropped relative
        embeddings and two int64 gather indices (sequence x sequence). Embeddings: LayerNorm input and dropout."""
        seq = job.seq_length + (job.num_virtual_tokens if job.method == "prompt-tuning" else 0)
        tokens = micro_batch * seq
        h = self.hidden_size
        per_layer = self._layer_bytes(job, micro_batch, seq, wb)
        embeddings = (h + (h if self.hidden_dropout > 0 else 0)) * wb * tokens
        if self.relative_attention:
            embeddings += 2 * self.position_span * h * wb  # the relative embeddings' LayerNorm output, shared
        if checkpointing:
            return self.layers * h * wb * tokens + embeddings, per_layer
        return self.layers * per_layer + embeddings, 0.0

    def logit_elements(self, job: Job, micro_batch: int) -> float:
        return float(micro_batch * self.num_labels)


# ------------------------------------------------------------------ encoder-decoder (T5, BART)
class EncoderDecoderShape(Architecture):
    """What T5 and BART share: a shared embedding, encoder and decoder stacks, and for seq2seq the lm_head
    (the shared embedding, tied) or for sequence classification a dense + out_proj ``classification_head``."""

    encoder_layers: int
    decoder_layers: int

    @property
    def num_layers(self) -> int:
        return self.encoder_layers + self.decoder_layers

    def describe(self) -> str:
        head = f"{self.num_labels} classes" if self.task == "sequence-classification" else f"vocabulary {self.vocab_size}"
        return (f"{self.encoder_layers}+{self.decoder_layers} encoder+decoder layers, hidden {self.hidden_size}, "
                f"{head}")

    def encoder_linears(self) -> list[Linear]:
        raise NotImplementedError

    def decoder_linears(self) -> list[Linear]:
        raise NotImplementedError

    def _block(self, linears: list[Linear], norms: int) -> int:
        """Parameters of one layer with these linears and ``norms`` layer norms."""
        raise NotImplementedError

    def head_linears(self) -> list[Linear]:
        d = self.hidden_size
        if self.task == "sequence-classification":
            return [Linear("classification_head.dense", d, d, 1, True),
                    Linear("classification_head.out_proj", d, self.num_labels, 1, True)]
        return [Linear("lm_head", d, self.vocab_size, 1, output=True)]

    def linears(self) -> list[Linear]:
        return self.encoder_linears() + self.decoder_linears() + self.head_linears()

    def largest_layer_parameters(self) -> int:
        return max(self.embedding_parameters(), self._block(self.decoder_linears(), 3))

    def module_parameters(self, name: str) -> int | None:
        d = self.hidden_size
        return {"lm_head": self.vocab_size * d, "shared": self.vocab_size * d,
                "classification_head": d * d + d + d * self.num_labels + self.num_labels}.get(name)

    def prompt_parameters(self, job: Job) -> int:
        # PEFT prompts both the encoder and the decoder of a SEQ_2_SEQ_LM model
        return job.num_virtual_tokens * self.hidden_size * (2 if self.task == "seq2seq" else 1)

    def prefix_layers(self) -> int:
        # PEFT reads config.num_layers (T5) or config.num_hidden_layers (BartConfig sets it to encoder_layers)
        return self.encoder_layers

    def logit_elements(self, job: Job, micro_batch: int) -> float:
        if self.task == "sequence-classification":
            return float(micro_batch * self.num_labels)
        return float(micro_batch * job.seq_length * self.vocab_size)

    def lm_head_trainable(self, job: Job) -> bool:
        return self.task == "seq2seq" and (job.method == "full" or "lm_head" in job.modules_to_save)


# ------------------------------------------------------------------ T5
@dataclass(frozen=True)
class T5Shape(EncoderDecoderShape):
    """``T5ForConditionalGeneration`` (seq2seq) or ``T5ForSequenceClassification``: a shared embedding,
    encoder and decoder stacks (self-attention without biases, the decoder's cross-attention, a relative
    attention bias in each stack's first block, RMS layer norms, a ReLU or gated-GELU MLP), and the
    lm_head (seq2seq) or a dense + out_proj classification head. The lm_head is the shared embedding unless
    config.json says ``tie_word_embeddings: false`` (t5-v1_1, flan-t5, mt5): transformers 5's T5Config and
    MT5Config tie it whatever config.json says, so ``from_config`` builds a tied model, but ``from_pretrained``
    (what the trainer calls) finds the checkpoint's own lm_head, with values other than the embedding's, and
    leaves the two untied (a checkpoint saved by transformers 5 says true, and has no lm_head tensor)."""

    model_type: str
    task: str
    vocab_size: int
    hidden_size: int  # d_model
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    gated: bool
    buckets: int
    num_labels: int
    dropout: float = 0.1
    act: str = "relu"  # of the MLP: relu, gelu (gelu_new when gated)
    tied: bool = True  # the lm_head is the shared embedding (t5-v1_1, flan-t5, mt5 checkpoints: their own lm_head)

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv

    def _mlp(self, prefix: str, n: int) -> list[Linear]:
        d, f = self.hidden_size, self.d_ff
        wi = [Linear(f"{prefix}.DenseReluDense.wi_0", d, f, n), Linear(f"{prefix}.DenseReluDense.wi_1", d, f, n)] \
            if self.gated else [Linear(f"{prefix}.DenseReluDense.wi", d, f, n)]
        return [*wi, Linear(f"{prefix}.DenseReluDense.wo", f, d, n)]

    def _attention(self, prefix: str, n: int) -> list[Linear]:
        d, inner = self.hidden_size, self.inner
        return [Linear(f"{prefix}.{p}", d, inner, n) for p in ("q", "k", "v")] + [Linear(f"{prefix}.o", inner, d, n)]

    def encoder_linears(self) -> list[Linear]:
        n = self.encoder_layers
        return self._attention("encoder.layer.0.SelfAttention", n) + self._mlp("encoder.layer.1", n)

    def decoder_linears(self) -> list[Linear]:
        n = self.decoder_layers
        return (self._attention("decoder.layer.0.SelfAttention", n) + self._attention("decoder.layer.1.EncDecAttention", n)
                + self._mlp("decoder.layer.2", n))

    def _block(self, linears: list[Linear], norms: int) -> int:
        return sum(x.fin * x.fout for x in linears) + norms * self.hidden_size

    def parameters(self) -> int:
        d = self.hidden_size
        n = self.embedding_parameters()
        n += self.encoder_layers * self._block(self.encoder_linears(), 2) + d  # + final layer norm
        n += self.decoder_layers * self._block(self.decoder_linears(), 3) + d
        n += 2 * self.buckets * self.num_heads  # relative attention bias, first block of each stack
        if self.task == "sequence-classification":
            n += sum(x.parameters for x in self.head_linears())
        elif not self.tied:
            n += self.vocab_size * d  # an lm_head of its own
        return n

    def _mlp_elements(self) -> float:
        f = self.d_ff
        if self.gated:  # gated-gelu's gelu_new is written in Python: x^3, tanh, sums and products each kept
            return 7.0 * f if self.act.startswith("gelu") else 3.0 * f
        return 1.0 * f if self.act == "relu" else 2.0 * f  # ReLU keeps its output, which wo reads

    def activation_bytes(self, job: Job, micro_batch: int, wb: int, checkpointing: bool) -> tuple[float, float]:
        """Per token, both the input and the target at dataset.maxSeqLength (the trainer cuts each to it).

        Counted from the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks on T5 in
        transformers 5, d_model = heads x d_kv): an encoder block keeps about 10 d_model-sized vectors
        (RMS norms' inputs and outputs, q, k, v, the attention output, residual sums), a decoder block 18
        (with cross-attention); the MLP 1 d_ff (ReLU) or 7 (gated-gelu: gelu_new is written in Python);
        dropout about one element per element. Attention: the relative position bias goes in as an additive
        mask that needs a gradient; on a CPU, PyTorch then runs the math kernel for self-attention and keeps
        the heads x keys probabilities (and, with dropout, the mask and dropped probabilities, also in
        cross-attention); on a GPU the fused kernels keep none (not measured here)."""
        seq = job.seq_length + (job.num_virtual_tokens if job.method == "prompt-tuning" else 0)
        tokens = micro_batch * seq
        d, inner, heads = self.hidden_size, self.inner, self.num_heads
        drop = self.dropout > 0
        mlp = self._mlp_elements() + (self.d_ff if drop else 0)
        cpu = job.device == "cpu"
        self_scores = (3 if drop else 1) * heads * seq if cpu else 0
        cross_scores = 3 * heads * seq if cpu and drop else 0
        enc = 4 * d + 6 * inner + mlp + self_scores + (2 * d if drop else 0)
        dec = 6 * d + 12 * inner + mlp + self_scores + cross_scores + (3 * d if drop else 0)
        enc += self._lora_extra(job, [x.path for x in self.encoder_linears()])
        dec += self._lora_extra(job, [x.path for x in self.decoder_linears()])
        stacks = 2.0 * (2 * d + (d if drop else 0))  # embedding output and final norm of each stack, dropout
        kept: float
        if checkpointing:
            kept = (self.encoder_layers + self.decoder_layers) * d + stacks
            recomputed = max(enc, dec)
        else:
            kept = self.encoder_layers * enc + self.decoder_layers * dec + stacks
            recomputed = 0.0
        return kept * wb * tokens, recomputed * wb * tokens


# ------------------------------------------------------------------ BART
@dataclass(frozen=True)
class BartShape(EncoderDecoderShape):
    """``BartForConditionalGeneration`` (seq2seq) or ``BartForSequenceClassification``: the shared embedding (also
    the encoder's and decoder's embed_tokens and the lm_head; ``tie_word_embeddings: false`` unties all three), learned positions
    per stack (max_position_embeddings + 2: BART offsets position ids by 2), a LayerNorm on each stack's embedding,
    post-LN layers with biased q/k/v/out_proj, the decoder's ``encoder_attn`` and ``fc1``/``fc2``; seq2seq adds
    ``final_logits_bias`` (a buffer, not a parameter, one value per token of the vocabulary), classification a
    ``classification_head`` (dense d x d + out_proj d x classes, biased) on the last EOS token's decoder state,
    which PEFT adapts rather than saving whole (its name is neither classifier nor score)."""

    model_type: str
    task: str
    vocab_size: int
    hidden_size: int  # d_model
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_positions: int
    num_labels: int
    tied: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    act: str = "gelu"  # activation_function of the MLP

    def _attention(self, prefix: str, n: int) -> list[Linear]:
        d = self.hidden_size
        return [Linear(f"{prefix}.{p}", d, d, n, True) for p in ("k_proj", "v_proj", "q_proj", "out_proj")]

    def encoder_linears(self) -> list[Linear]:
        d, f, n = self.hidden_size, self.encoder_ffn, self.encoder_layers
        return self._attention("encoder.layers.self_attn", n) + [Linear("encoder.layers.fc1", d, f, n, True),
                                                                Linear("encoder.layers.fc2", f, d, n, True)]

    def decoder_linears(self) -> list[Linear]:
        d, f, n = self.hidden_size, self.decoder_ffn, self.decoder_layers
        return (self._attention("decoder.layers.self_attn", n) + self._attention("decoder.layers.encoder_attn", n)
                + [Linear("decoder.layers.fc1", d, f, n, True), Linear("decoder.layers.fc2", f, d, n, True)])

    def _block(self, linears: list[Linear], norms: int) -> int:
        return sum(x.parameters // x.count for x in linears) + norms * 2 * self.hidden_size

    def parameters(self) -> int:
        n = self.embedding_parameters()
        n += 2 * self._stack_parameters()
        n += self.encoder_layers * self._block(self.encoder_linears(), 2)
        n += self.decoder_layers * self._block(self.decoder_linears(), 3)
        if self.task == "sequence-classification":
            n += sum(x.parameters for x in self.head_linears())
        if not self.tied:  # transformers 5 then unties the encoder's and decoder's embed_tokens too
            n += (3 if self.task == "seq2seq" else 2) * self.embedding_parameters()
        return n

    def _stack_parameters(self) -> int:
        """Each stack's positions (learned, offset by 2) and the LayerNorm on its embedding."""
        return (self.max_positions + 2) * self.hidden_size + 2 * self.hidden_size

    def activation_bytes(self, job: Job, micro_batch: int, wb: int, checkpointing: bool) -> tuple[float, float]:
        """Per token, the input and the decoder's sequence both at dataset.maxSeqLength (seq2seq: the target, cut
        to it; classification: the input shifted right). Counted from what autograd saves (saved-tensor hooks on
        BART in transformers 5): per attention block the q/k/v projections, SDPA's output and its contiguous copy,
        the residual LayerNorm's input and output (cross-attention: keys and values over the encoder's tokens);
        per MLP fc1's output and GELU's output (with activation dropout, its noise and the dropped output instead of
        GELU's); a dropout keeps about one element per element (CPU: its float noise). Attention: SDPA; on a CPU
        with attention dropout PyTorch runs the math kernel, which keeps heads x keys probabilities, noise and
        dropped probabilities per query; on a GPU the fused kernels keep none (not measured here)."""
        seq = job.seq_length + (job.num_virtual_tokens if job.method == "prompt-tuning" else 0)
        tokens = micro_batch * seq
        d = self.hidden_size
        drop = 1.0 if self.dropout > 0 else 0.0
        cpu_scores = job.device == "cpu" and self.attention_dropout > 0

        def attention(heads: int) -> float:
            return 6 * d + drop * d + (3 * heads * seq if cpu_scores else 0)

        def mlp(f: int) -> float:  # ReLU keeps only its output, which fc2 reads
            return (3 * f if self.activation_dropout > 0 else f if self.act == "relu" else 2 * f) + drop * d + d

        enc = d + attention(self.encoder_heads) + mlp(self.encoder_ffn)
        dec = d + 2 * attention(self.decoder_heads) + mlp(self.decoder_ffn)
        enc += self._lora_extra(job, [x.path for x in self.encoder_linears()])
        dec += self._lora_extra(job, [x.path for x in self.decoder_linears()])
        stacks = 2.0 * (2 * d + drop * d)  # each stack's embedding sum and LayerNorm output, dropout
        if checkpointing:
            return ((self.num_layers * d + stacks) * wb * tokens, max(enc, dec) * wb * tokens)
        return (self.encoder_layers * enc + self.decoder_layers * dec + stacks) * wb * tokens, 0.0


# ------------------------------------------------------------------ Pegasus
@dataclass(frozen=True)
class PegasusShape(BartShape):
    """``PegasusForConditionalGeneration`` (seq2seq only: transformers has no Pegasus classifier, and
    ``tasks.fitting_tasks`` says so): BART's modules and names with fixed sinusoidal positions (a frozen table of
    max_position_embeddings rows per stack, no offset: parameters that never train), pre-LN layers and a final
    LayerNorm on each stack instead of BART's LayerNorm on the embedding; ``scale_embedding`` multiplies the
    embedding by sqrt(d_model), which changes no count."""

    def _stack_parameters(self) -> int:
        return self.max_positions * self.hidden_size + 2 * self.hidden_size

    def frozen_parameters(self) -> int:
        return 2 * self.max_positions * self.hidden_size


def resolve_task(config: Mapping[str, Any], task: str | None) -> str:
    """model.task for this config (None/'auto': its first fitting task); PlanError naming the field when it does not fit."""
    from . import tasks

    if config.get("model_type") in ("t5", "mt5", "bart", "pegasus") and "is_encoder_decoder" not in config:
        config = {**config, "is_encoder_decoder": True}  # their Config classes' default
    fits = tasks.fitting_tasks(dict(config))
    if task in (None, "auto"):
        return fits[0]
    if task not in fits:
        raise PlanError(f"model.task {tasks.task_problem(str(task), dict(config))}")
    return str(task)


# model_type -> the family's shape (xlm-roberta is RoBERTa's modules with another vocabulary)
FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "t5", "bart", "distilbert", "electra", "mt5", "pegasus")


def shape_for(config: Mapping[str, Any], task: str | None = None, num_labels: int | None = None) -> Architecture | None:
    """The shape of a BERT or T5 config.json for ``task`` ('auto'/None: the model's first fitting task), else None."""
    mt = str(config.get("model_type", ""))
    if mt not in FAMILIES:
        return None
    t = resolve_task(config, task)
    try:
        if mt in ("bert", "roberta", "xlm-roberta"):
            return (BertShape if mt == "bert" else RobertaShape)(
                model_type=mt, task=t, vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
                layers=int(config["num_hidden_layers"]), num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                max_positions=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)), num_labels=num_labels_of(config, num_labels),
                hidden_dropout=float(config.get("hidden_dropout_prob", 0.1)),
                attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
            )
        if mt == "distilbert":
            return _distilbert(config, t, num_labels_of(config, num_labels))
        if mt == "electra":
            return _electra(config, t, num_labels_of(config, num_labels))
        if mt == "deberta-v2":
            return _deberta_v2(config, t, num_labels_of(config, num_labels))
        if mt in ("bart", "pegasus"):  # BartConfig's and PegasusConfig's defaults are the same
            enc = int(config.get("encoder_layers", 12))
            return (BartShape if mt == "bart" else PegasusShape)(
                model_type=mt, task=t, vocab_size=int(config["vocab_size"]), hidden_size=int(config.get("d_model", 1024)),
                encoder_layers=enc, decoder_layers=int(config.get("decoder_layers", 12)),
                encoder_heads=int(config.get("encoder_attention_heads", 16)),
                decoder_heads=int(config.get("decoder_attention_heads", 16)),
                encoder_ffn=int(config.get("encoder_ffn_dim", 4096)), decoder_ffn=int(config.get("decoder_ffn_dim", 4096)),
                max_positions=int(config.get("max_position_embeddings", 1024)), num_labels=num_labels_of(config, num_labels),
                tied=bool(config.get("tie_word_embeddings", True)), dropout=float(config.get("dropout", 0.1)),
                attention_dropout=float(config.get("attention_dropout", 0.0)),
                activation_dropout=float(config.get("activation_dropout", 0.0)),
                act=str(config.get("activation_function", "gelu")),
            )
        return _t5(config, mt, t, num_labels_of(config, num_labels))
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"config.json lacks or mangles {e}: not a complete {mt} config") from e


def _deberta_v2(config: Mapping[str, Any], task: str, num_labels: int) -> DebertaV2Shape:
    """DebertaV2Config's reading of config.json (its defaults where a field is missing)."""
    hidden, heads = int(config.get("hidden_size", 1536)), int(config.get("num_attention_heads", 24))
    max_positions = int(config.get("max_position_embeddings", 512))
    relative = bool(config.get("relative_attention", False))
    buckets = int(config.get("position_buckets", -1))
    max_rel = int(config.get("max_relative_positions", -1))
    span = buckets if buckets > 0 else (max_rel if max_rel >= 1 else max_positions)
    kinds = config.get("pos_att_type") or []
    if isinstance(kinds, str):
        kinds = kinds.lower().split("|")
    return DebertaV2Shape(
        model_type="deberta-v2", task=task, vocab_size=int(config.get("vocab_size", 128100)), hidden_size=hidden,
        layers=int(config.get("num_hidden_layers", 24)), num_heads=heads,
        head_size=int(config.get("attention_head_size") or hidden // heads),
        intermediate_size=int(config.get("intermediate_size", 6144)),
        embedding_size=int(config.get("embedding_size") or hidden), max_positions=max_positions,
        position_biased_input=bool(config.get("position_biased_input", True)),
        type_vocab_size=int(config.get("type_vocab_size", 0)), relative_attention=relative, position_span=span,
        pos_att_type=tuple(str(k).strip() for k in kinds), share_att_key=bool(config.get("share_att_key", False)),
        norm_rel_ebd="layer_norm" in str(config.get("norm_rel_ebd", "none")).lower(),
        conv_kernel_size=int(config.get("conv_kernel_size", 0)), conv_groups=int(config.get("conv_groups", 1)),
        pooler_hidden_size=int(config.get("pooler_hidden_size") or hidden), num_labels=num_labels,
        hidden_dropout=float(config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
    )


def _distilbert(config: Mapping[str, Any], task: str, num_labels: int) -> DistilBertShape:
    """DistilBertConfig's reading of config.json: its own names (dim, hidden_dim, n_layers, n_heads) and defaults."""
    return DistilBertShape(
        model_type="distilbert", task=task, vocab_size=int(config.get("vocab_size", 30522)),
        hidden_size=int(config.get("dim", 768)), layers=int(config.get("n_layers", 6)),
        num_heads=int(config.get("n_heads", 12)), intermediate_size=int(config.get("hidden_dim", 4 * 768)),
        max_positions=int(config.get("max_position_embeddings", 512)), type_vocab_size=0, num_labels=num_labels,
        hidden_dropout=float(config.get("dropout", 0.1)), attention_dropout=float(config.get("attention_dropout", 0.1)),
    )


def _electra(config: Mapping[str, Any], task: str, num_labels: int) -> ElectraShape:
    """ElectraConfig's reading of config.json (its defaults: electra-small's shape)."""
    return ElectraShape(
        model_type="electra", task=task, vocab_size=int(config.get("vocab_size", 30522)),
        hidden_size=int(config.get("hidden_size", 256)), layers=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 4)), intermediate_size=int(config.get("intermediate_size", 1024)),
        max_positions=int(config.get("max_position_embeddings", 512)), type_vocab_size=int(config.get("type_vocab_size", 2)),
        num_labels=num_labels, hidden_dropout=float(config.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(config.get("attention_probs_dropout_prob", 0.1)),
        embedding_size=int(config.get("embedding_size", 128)),
    )


# What T5Config and MT5Config (T5 v1.1: gated-GELU, 250,112 tokens) assume where config.json is silent; a t5
# config.json must name its vocab_size and d_model.
_T5_DEFAULTS: dict[str, dict[str, Any]] = {
    "t5": {"num_layers": 6, "num_heads": 8, "d_ff": 2048, "feed_forward_proj": "relu"},
    "mt5": {"vocab_size": 250112, "d_model": 512, "num_layers": 8, "num_heads": 6, "d_ff": 1024,
            "feed_forward_proj": "gated-gelu"},
}


def _t5(config: Mapping[str, Any], model_type: str, task: str, num_labels: int) -> T5Shape:
    """T5Config's or MT5Config's reading of config.json.

    The lm_head: the published t5-v1_1, flan-t5 and mT5 checkpoints keep one of their own (config.json says
    tie_word_embeddings: false, and the weights differ from the shared embedding): planned untied when config.json
    says false, tied otherwise (the Config classes' default), see T5Shape."""
    defaults = _T5_DEFAULTS[model_type]

    def field(key: str) -> Any:
        return config.get(key, defaults[key]) if key in defaults else config[key]

    proj = str(field("feed_forward_proj"))
    layers = int(field("num_layers"))
    return T5Shape(
        model_type=model_type, task=task, vocab_size=int(field("vocab_size")), hidden_size=int(field("d_model")),
        encoder_layers=layers, decoder_layers=int(config.get("num_decoder_layers") or layers),
        num_heads=int(field("num_heads")), d_kv=int(config.get("d_kv", 64)), d_ff=int(field("d_ff")),
        gated=proj.startswith("gated-"), buckets=int(config.get("relative_attention_num_buckets", 32)),
        num_labels=num_labels, dropout=float(config.get("dropout_rate", 0.1)), act=proj.split("-")[-1],
        tied=bool(config.get("tie_word_embeddings", True)),
    )
