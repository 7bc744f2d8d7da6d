r"""The EAS meta-controller: a policy over Net2Wider / Net2Deeper actions, trained with REINFORCE.

Follows PAPER.md ("Meta-controller"); the two bugs of the released code named there are not reproduced (the
Net2Deeper block index is masked to the blocks that exist, and the baseline keeps 0.95 on the old value).

Encoder
    Each layer is a token (``conv-{filters}-{kernel}``, ``fc-{units}``, ``pool``; widths outside the search
    space's lists map to one unknown token per kind), embedded in 16 dimensions and read by a one-layer
    bidirectional LSTM with 50 units per direction: one 100-dim vector e_i per layer, and a final state
    (h, c) = ([h_fwd_T; h_bwd_1], [c_fwd_T; c_bwd_1]) of 100 dims.

Net2Wider actor
    One shared linear layer: p_i = sigmoid(w . e_i + b). Layer i is widened to the next width of its list with
    probability p_i. Pool tokens, the output layer and layers at the maximum width are masked: they are never
    widened and add nothing to the log-probability or the entropy:
        log pi(a) = sum_{i unmasked} [a_i log p_i + (1 - a_i) log(1 - p_i)].

Net2Deeper actor
    An autoregressive LSTM cell (100 units) started from the encoder's final state makes three choices, each a
    softmax over the options that exist (masked entries get probability 0):
      1. block: input a learned start vector; the score of block j is (W_b h_1) . mean_{i in block j} e_i;
         blocks with no layer to deepen after are masked (the released code forgot this mask);
      2. layer in that block: input the chosen block's mean encoding; score (W_l h_2) . e_i over the block's
         layers (the output layer is masked: an identity + ReLU after the logits is not function-preserving);
      3. kernel in the space's kernels (default {1, 3, 5}): input e of the chosen layer; a linear head on h_3.
         Only for conv blocks: for an fc block the kernel is neither sampled nor part of log pi.
    The paper scores blocks and layers with fixed-size softmax heads; scoring them against the encoder's
    outputs (a pointer) needs no cap on the number of blocks or layers, and masking is exact by construction.

Training (REINFORCE)
    A sampled network (an *episode*: ``n_wider`` = 4 Net2Wider then ``n_deeper`` = 5 Net2Deeper actions, the
    tokens re-encoded after each) is trained by the search and gets the reward
        R = tan(min(val_acc, 0.999) * pi / 2)          (a failed child gets R = 0),
    which stretches differences near high accuracy; the clip keeps R finite (tan(0.999 pi/2) ~ 637).
    For a batch of m episodes with actions a_{k,t} taken in states s_{k,t}, the loss is
        L = -(1/m) sum_k (R_k - b) sum_t log pi(a_{k,t} | s_{k,t})  -  beta (1/m) sum_k sum_t H(pi(. | s_{k,t})),
    so -grad L is the REINFORCE estimate of grad E[R] plus an entropy bonus beta = 1e-5; Adam, lr 2e-3.
    Every action of episode k gets the same advantage R_k - b.

    Baseline: b <- 0.95 b + 0.05 mean_k(R_k), an exponential moving average of the batch-mean reward,
    initialised to the first batch's mean reward. The advantage uses b *before* this batch is folded in, so
    that b does not depend on the actions it judges and the estimator stays unbiased. (Folding the batch in
    first makes b contain 0.05 R_k / m, which shrinks the expected gradient by the factor 1 - 0.05/m: small,
    but there is no reason to take it.) The first batch has no earlier b and uses its own mean (advantages
    R_k - mean R), which shrinks that one gradient by 1 - 1/m. ``update`` reports both: ``baseline_used``
    (in the advantage) and ``baseline`` (after the update, what the store records).

``update`` recomputes the log-probabilities of the recorded decisions (each decision keeps its token list and
its choices), so sampling holds no autograd graph and a decision can be re-scored after a resume.

Sampling draws from a ``torch.Generator`` owned by the policy; ``state_dict()`` holds the weights, the Adam
state, the baseline and that generator's state, so a search resumed from a saved step takes the same
decisions it would have taken without the crash.
"""

from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from easc.search.tokens import (
    LayerToken,
    SearchSpace,
    apply_deeper,
    apply_wider,
    blocks,
    deepen_points,
    token_string,
    widen_mask,
)

__all__ = [
    "ControllerError",
    "WiderDecision",
    "DeeperDecision",
    "Decision",
    "Episode",
    "Policy",
    "ReinforcePolicy",
    "RandomPolicy",
    "Vocabulary",
    "make_policy",
    "reward_from_accuracy",
    "update_baseline",
    "simulate_episode",
]

# Sizes and hyper-parameters from PAPER.md.
EMBED_DIM = 16
ENCODER_UNITS = 50  # per direction
DECODER_UNITS = 100
LEARNING_RATE = 2e-3
ENTROPY_BONUS = 1e-5
BASELINE_DECAY = 0.95
N_WIDER = 4
N_DEEPER = 5
# tan(x pi/2) diverges at x = 1; 0.999 keeps the largest reward ~637 so one near-perfect child cannot make
# the gradient infinite.
ACCURACY_CLIP = 0.999

STATE_VERSION = 1


class ControllerError(ValueError):
    """A decision, a token list or a saved state the controller cannot use."""


def reward_from_accuracy(val_acc: float | None) -> float:
    """R = tan(clip(val_acc, 0, 0.999) * pi / 2); a failed child (None or NaN accuracy) gets 0."""
    if val_acc is None or not math.isfinite(val_acc):
        return 0.0
    acc = min(max(float(val_acc), 0.0), ACCURACY_CLIP)
    return math.tan(acc * math.pi / 2)


def update_baseline(baseline: float | None, batch_mean_reward: float) -> float:
    """b <- 0.95 b + 0.05 mean(R); the first batch's mean reward initialises b."""
    if baseline is None:
        return float(batch_mean_reward)
    return BASELINE_DECAY * baseline + (1.0 - BASELINE_DECAY) * float(batch_mean_reward)


# --------------------------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class WiderDecision:
    """One Net2Wider action: which layers of ``tokens`` go to their next width."""

    tokens: tuple[LayerToken, ...]
    widen: tuple[bool, ...]  # one entry per token
    log_prob: float  # at sampling time (``evaluate`` recomputes it with gradients)
    entropy: float

    @property
    def names(self) -> tuple[str, ...]:
        """IR node names of the widened layers (the search widens these nodes)."""
        return tuple(t.name for t, w in zip(self.tokens, self.widen) if w)

    def apply(self, space: SearchSpace) -> list[LayerToken]:
        """The token list after this action (token-level simulation)."""
        return apply_wider(self.tokens, self.widen, space)


@dataclass(frozen=True)
class DeeperDecision:
    """One Net2Deeper action: insert a layer after layer ``layer`` of block ``block`` of ``tokens``."""

    tokens: tuple[LayerToken, ...]
    block: int
    layer: int  # index inside the block
    kernel: int | None  # kernel size of the new conv; None for an fc block (not sampled)
    log_prob: float
    entropy: float

    @property
    def index(self) -> int:
        """Position in ``tokens`` of the layer the new one goes after."""
        return blocks(self.tokens)[self.block][self.layer]

    @property
    def name(self) -> str:
        """IR node name of the layer the new one goes after."""
        return self.tokens[self.index].name

    @property
    def kind(self) -> str:
        return self.tokens[self.index].kind

    def apply(self) -> list[LayerToken]:
        return apply_deeper(self.tokens, self.block, self.layer, self.kernel)


Decision = Union[WiderDecision, DeeperDecision]


@dataclass(frozen=True)
class Episode:
    """The decisions that produced one child network, and the reward that child earned."""

    decisions: tuple[Decision, ...]
    reward: float

    @classmethod
    def from_accuracy(cls, decisions: Iterable[Decision], val_acc: float | None) -> Episode:
        return cls(tuple(decisions), reward_from_accuracy(val_acc))


# ------------------------------------------------------------------------------------------ vocabulary

class Vocabulary:
    """Token strings -> embedding rows: every ``conv-{w}-{k}`` and ``fc-{w}`` of the space, ``pool``, unknowns."""

    PAD, POOL, CONV_UNKNOWN, FC_UNKNOWN = "<pad>", "pool", "conv-unk", "fc-unk"

    def __init__(self, space: SearchSpace):
        words = [self.PAD, self.POOL, self.CONV_UNKNOWN, self.FC_UNKNOWN]
        words += [f"conv-{w}-{k}" for w in space.conv_widths for k in space.kernels]
        words += [f"fc-{w}" for w in space.fc_widths]
        self.words = tuple(words)
        self.index = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.words)

    def id(self, t: LayerToken) -> int:
        unknown = {"conv": self.CONV_UNKNOWN, "fc": self.FC_UNKNOWN, "pool": self.POOL}[t.kind]
        return self.index.get(token_string(t), self.index[unknown])

    def encode(self, tokens: Sequence[LayerToken]) -> list[int]:
        return [self.id(t) for t in tokens]


# -------------------------------------------------------------------------------------- the base class

class Policy(abc.ABC):
    """What the search needs of a controller: sample actions one at a time, learn from rewarded episodes.

    The search calls ``sample_wider`` / ``sample_deeper`` with the current tokens, applies the action to the
    IR, lowers the child to tokens again and asks for the next action; after the children are trained it
    calls ``update`` with one :class:`Episode` per child.
    """

    kind: str = "policy"

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.baseline: float | None = None
        self.n_updates = 0

    @abc.abstractmethod
    def sample_wider(self, tokens: Sequence[LayerToken]) -> WiderDecision: ...

    @abc.abstractmethod
    def sample_deeper(self, tokens: Sequence[LayerToken]) -> DeeperDecision: ...

    @abc.abstractmethod
    def update(self, episodes: Sequence[Episode]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]:
        """A deep copy: later sampling or training does not change a state already taken."""
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "space": self.space.to_dict(),
            "seed": self.seed,
            "baseline": self.baseline,
            "n_updates": self.n_updates,
            "generator": self.generator.get_state().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ControllerError(f"controller state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state.get("kind") != self.kind:
            raise ControllerError(f"controller state is for a {state.get('kind')!r} policy, not {self.kind!r}")
        if SearchSpace.from_dict(state["space"]) != self.space:
            raise ControllerError(f"controller state was saved for search space {state['space']}, "
                                  f"this policy uses {self.space.to_dict()}")
        self.seed = int(state["seed"])
        self.baseline = state["baseline"]
        self.n_updates = int(state["n_updates"])
        self.generator.set_state(state["generator"].clone())

    # -- shared helpers

    def _check_tokens(self, tokens: Sequence[LayerToken]) -> tuple[LayerToken, ...]:
        tokens = tuple(tokens)
        if not tokens:
            raise ControllerError("the network has no layer tokens")
        return tokens

    def _deepenable(self, tokens: tuple[LayerToken, ...]) -> list[list[bool]]:
        points = deepen_points(tokens, self.space)
        if not any(any(b) for b in points):
            raise ControllerError("no layer can be deepened: the network has no conv or fc layer besides the "
                                  "output, or every block is at the search space's layer limits")
        return points

    def _advance_baseline(self, rewards: Sequence[float]) -> tuple[float, float, float]:
        """(mean reward, baseline for this batch's advantages, baseline after this batch)."""
        if not rewards:
            raise ControllerError("update needs at least one episode")
        mean = float(sum(rewards) / len(rewards))
        used = mean if self.baseline is None else self.baseline
        self.baseline = update_baseline(self.baseline, mean)
        self.n_updates += 1
        return mean, used, self.baseline


# --------------------------------------------------------------------------------- the network (torch)

class _ControllerNet(nn.Module):
    def __init__(self, vocab_size: int, n_kernels: int):
        super().__init__()
        enc = 2 * ENCODER_UNITS
        self.embed = nn.Embedding(vocab_size, EMBED_DIM, padding_idx=0)
        self.encoder = nn.LSTM(EMBED_DIM, ENCODER_UNITS, batch_first=True, bidirectional=True)
        self.wider_head = nn.Linear(enc, 1)
        self.decoder = nn.LSTMCell(enc, DECODER_UNITS)
        self.decoder_start = nn.Parameter(torch.zeros(enc))
        self.block_query = nn.Linear(DECODER_UNITS, enc, bias=False)
        self.layer_query = nn.Linear(DECODER_UNITS, enc, bias=False)
        self.kernel_head = nn.Linear(DECODER_UNITS, n_kernels)


def _masked_categorical(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise log-probabilities (-inf where masked) and entropies over the unmasked entries."""
    logp = F.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    # exp(-inf) = 0 exactly; the zero fill keeps 0 * -inf (NaN) out of the entropy and its gradient.
    entropy = -(logp.exp() * logp.masked_fill(~mask, 0.0)).sum(-1)
    return logp, entropy


def _bernoulli_terms(logits: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over unmasked positions (last dim) of log-probability of ``actions`` and Bernoulli entropy."""
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)  # log p, log(1 - p), stable
    logp = torch.where(actions, log_p, log_q)
    entropy = -(log_p.exp() * log_p + log_q.exp() * log_q)
    zero = torch.zeros((), dtype=logits.dtype)
    return torch.where(mask, logp, zero).sum(-1), torch.where(mask, entropy, zero).sum(-1)


@dataclass
class _DeeperBatch:
    """Padded block structure of a batch of token lists."""

    members: torch.Tensor  # [B, NB, L] token index of each layer of each block (0 where padded)
    member_mask: torch.Tensor  # [B, NB, L] the layer exists
    point_mask: torch.Tensor  # [B, NB, L] a new layer may go after it
    block_is_conv: list[list[bool]]

    @classmethod
    def build(cls, token_lists: Sequence[tuple[LayerToken, ...]], space: SearchSpace | None = None) -> _DeeperBatch:
        all_blocks = [blocks(t) for t in token_lists]
        nb = max(len(b) for b in all_blocks)
        nl = max(len(block) for b in all_blocks for block in b)
        size = (len(token_lists), nb, nl)
        members = torch.zeros(size, dtype=torch.long)
        member_mask = torch.zeros(size, dtype=torch.bool)
        point_mask = torch.zeros(size, dtype=torch.bool)
        is_conv = []
        for i, (tokens, bl) in enumerate(zip(token_lists, all_blocks)):
            for j, block in enumerate(bl):
                members[i, j, : len(block)] = torch.tensor(block)
                member_mask[i, j, : len(block)] = True
            for j, (block, points) in enumerate(zip(bl, deepen_points(tokens, space))):
                point_mask[i, j, : len(block)] = torch.tensor(points)
            is_conv.append([tokens[b[0]].kind == "conv" for b in bl])
        return cls(members, member_mask, point_mask, is_conv)


class ReinforcePolicy(Policy):
    """The paper's meta-controller (see the module docstring), trained with REINFORCE."""

    kind = "reinforce"

    def __init__(self, space: SearchSpace, seed: int = 0, *, lr: float = LEARNING_RATE,
                 entropy_bonus: float = ENTROPY_BONUS):
        super().__init__(space, seed)
        self.vocab = Vocabulary(space)
        self.entropy_bonus = float(entropy_bonus)
        # Initial weights from the seed too, without disturbing the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = _ControllerNet(len(self.vocab), len(space.kernels))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)

    # -- encoder

    def _encode(self, token_lists: Sequence[tuple[LayerToken, ...]]):
        """Encoder outputs [B, T, 100] (zero past each list's end) and final state (h, c), each [B, 100]."""
        ids = [self.vocab.encode(t) for t in token_lists]
        lengths = torch.tensor([len(i) for i in ids])
        padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for row, seq in enumerate(ids):
            padded[row, : len(seq)] = torch.tensor(seq)
        packed = pack_padded_sequence(self.net.embed(padded), lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.net.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=padded.shape[1])
        # h[0]: forward direction after the last token; h[1]: backward direction after the first token.
        return out, (torch.cat([h[0], h[1]], dim=-1), torch.cat([c[0], c[1]], dim=-1))

    # -- the two actors. The same code samples (batch of one) and re-scores recorded decisions (any batch), so
    # the recomputed log-probabilities are those of sampling. For Net2Deeper, `choose(step, logp, active=None)`
    # returns the indices [B] picked at step 0 (block), 1 (layer) or 2 (kernel, only where `active`).

    def _wider(self, token_lists, widen=None):
        enc, _ = self._encode(token_lists)
        logits = self.net.wider_head(enc).squeeze(-1)  # [B, T]
        mask = torch.zeros(logits.shape, dtype=torch.bool)
        for row, tokens in enumerate(token_lists):
            mask[row, : len(tokens)] = torch.tensor(widen_mask(tokens, self.space))
        if widen is None:  # sample (batch of one)
            u = torch.rand(logits.shape[1], generator=self.generator)
            widen = ((u < torch.sigmoid(logits[0])) & mask[0]).unsqueeze(0)
        logp, entropy = _bernoulli_terms(logits, widen, mask)
        return widen, logp, entropy

    def _deeper(self, token_lists, choose):
        enc, (h, c) = self._encode(token_lists)
        batch = _DeeperBatch.build(token_lists, self.space)
        rows = torch.arange(len(token_lists))
        dim = enc.shape[-1]
        # Encodings of every layer of every block: [B, NB, L, 100]; block summary = mean over its layers.
        b, nb, nl = batch.members.shape
        layer_enc = enc.gather(1, batch.members.reshape(b, nb * nl, 1).expand(-1, -1, dim)).reshape(b, nb, nl, dim)
        counts = batch.member_mask.sum(-1, keepdim=True).clamp(min=1)  # padded blocks: avoid 0/0 in backward
        block_enc = (layer_enc * batch.member_mask.unsqueeze(-1)).sum(2) / counts

        h, c = self.net.decoder(self.net.decoder_start.expand(b, -1), (h, c))
        block_logits = torch.einsum("bd,bnd->bn", self.net.block_query(h), block_enc)
        block_logp, block_ent = _masked_categorical(block_logits, batch.point_mask.any(-1))
        block = choose(0, block_logp)

        h, c = self.net.decoder(block_enc[rows, block], (h, c))
        chosen_layers = layer_enc[rows, block]  # [B, L, 100]
        layer_logits = torch.einsum("bd,bld->bl", self.net.layer_query(h), chosen_layers)
        layer_logp, layer_ent = _masked_categorical(layer_logits, batch.point_mask[rows, block])
        layer = choose(1, layer_logp)

        is_conv = torch.tensor([batch.block_is_conv[r][int(block[r])] for r in range(b)])
        logp = block_logp[rows, block] + layer_logp[rows, layer]
        entropy = block_ent + layer_ent
        kernel = torch.full((b,), -1, dtype=torch.long)
        if bool(is_conv.any()):
            h, c = self.net.decoder(chosen_layers[rows, layer], (h, c))
            kernel_logp, kernel_ent = _masked_categorical(
                self.net.kernel_head(h), torch.ones(b, len(self.space.kernels), dtype=torch.bool))
            kernel = choose(2, kernel_logp, is_conv)
            zero = torch.zeros(())
            # fc blocks: the kernel is not a choice, so neither its log-prob nor its entropy counts.
            logp = logp + torch.where(is_conv, kernel_logp[rows, kernel.clamp(min=0)], zero)
            entropy = entropy + torch.where(is_conv, kernel_ent, zero)
        return block, layer, kernel, logp, entropy

    # -- the Policy interface

    def sample_wider(self, tokens: Sequence[LayerToken]) -> WiderDecision:
        tokens = self._check_tokens(tokens)
        with torch.no_grad():
            widen, logp, entropy = self._wider([tokens])
        return WiderDecision(tokens, tuple(bool(w) for w in widen[0, : len(tokens)]), float(logp), float(entropy))

    def sample_deeper(self, tokens: Sequence[LayerToken]) -> DeeperDecision:
        tokens = self._check_tokens(tokens)
        self._deepenable(tokens)

        def sample(step, logp, active=None):
            if active is not None and not bool(active[0]):
                return torch.tensor([-1])  # fc block: no kernel, and no random number drawn for it
            return torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(1)

        with torch.no_grad():
            block, layer, kernel, logp, entropy = self._deeper([tokens], sample)
        k = int(kernel[0])
        return DeeperDecision(tokens, int(block[0]), int(layer[0]), self.space.kernels[k] if k >= 0 else None,
                              float(logp), float(entropy))

    def evaluate(self, decisions: Sequence[Decision]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and entropies [N] of recorded decisions under the current weights (with grad)."""
        logp = torch.zeros(len(decisions))
        entropy = torch.zeros(len(decisions))
        wider = [i for i, d in enumerate(decisions) if isinstance(d, WiderDecision)]
        deeper = [i for i, d in enumerate(decisions) if isinstance(d, DeeperDecision)]
        if len(wider) + len(deeper) != len(decisions):
            raise ControllerError("evaluate takes WiderDecision and DeeperDecision objects only")
        if wider:
            token_lists = [decisions[i].tokens for i in wider]
            widen = torch.zeros(len(wider), max(len(t) for t in token_lists), dtype=torch.bool)
            for row, i in enumerate(wider):
                d = decisions[i]
                if any(w and not ok for w, ok in zip(d.widen, widen_mask(d.tokens, self.space))):
                    raise ControllerError(f"wider decision widens a masked layer: {d.names}")
                widen[row, : len(d.widen)] = torch.tensor(d.widen)
            _, lp, ent = self._wider(token_lists, widen)
            logp = logp.index_put((torch.tensor(wider),), lp)
            entropy = entropy.index_put((torch.tensor(wider),), ent)
        if deeper:
            recorded = [decisions[i] for i in deeper]
            for d in recorded:
                self._check_deeper(d)
            picks = [
                torch.tensor([d.block for d in recorded]),
                torch.tensor([d.layer for d in recorded]),
                torch.tensor([-1 if d.kernel is None else self.space.kernels.index(d.kernel) for d in recorded]),
            ]
            _, _, _, lp, ent = self._deeper([d.tokens for d in recorded], lambda step, *_: picks[step])
            logp = logp.index_put((torch.tensor(deeper),), lp)
            entropy = entropy.index_put((torch.tensor(deeper),), ent)
        return logp, entropy

    def _check_deeper(self, d: DeeperDecision) -> None:
        points = self._deepenable(d.tokens)
        if not (0 <= d.block < len(points) and 0 <= d.layer < len(points[d.block]) and points[d.block][d.layer]):
            raise ControllerError(f"deeper decision names block {d.block}, layer {d.layer}: not a deepening point")
        if d.kind == "conv" and d.kernel not in self.space.kernels:
            raise ControllerError(f"deeper decision kernel {d.kernel} is not one of {self.space.kernels}")
        if d.kind == "fc" and d.kernel is not None:
            raise ControllerError(f"deeper decision in an fc block carries kernel {d.kernel}; it must be None")

    def update(self, episodes: Sequence[Episode]) -> dict[str, float]:
        episodes = list(episodes)
        decisions = [d for e in episodes for d in e.decisions]
        # Scored before the baseline moves: a decision evaluate refuses leaves the policy as it was.
        logp, entropy = self.evaluate(decisions) if decisions else (None, None)
        mean, used, after = self._advance_baseline([e.reward for e in episodes])
        if not decisions:  # nothing was chosen, so there is nothing to reinforce
            return {"mean_reward": mean, "baseline": after, "baseline_used": used, "loss": 0.0, "entropy": 0.0}
        advantage = torch.tensor([e.reward - used for e in episodes for _ in e.decisions])
        m = len(episodes)
        policy_loss = -(advantage * logp).sum() / m
        mean_entropy = entropy.sum() / m  # per network: summed over its actions
        loss = policy_loss - self.entropy_bonus * mean_entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"mean_reward": mean, "baseline": after, "baseline_used": used,
                "loss": loss.item(), "entropy": mean_entropy.item()}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["config"] = {"lr": self.optimizer.param_groups[0]["lr"], "entropy_bonus": self.entropy_bonus}
        state["model"] = copy.deepcopy(self.net.state_dict())
        state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.entropy_bonus = float(state["config"]["entropy_bonus"])
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


class RandomPolicy(Policy):
    """Random search: every choice uniform over the valid options, no learning (PAPER.md's baseline).

    Wider: each unmasked layer is widened with probability 1/2. Deeper: a block uniformly among those with a
    deepening point, then a layer uniformly among its points, then a kernel uniformly (conv only).
    ``update`` keeps the same baseline as the RL policy, for reporting only.
    """

    kind = "random"

    def _uniform(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def sample_wider(self, tokens: Sequence[LayerToken]) -> WiderDecision:
        tokens = self._check_tokens(tokens)
        mask = widen_mask(tokens, self.space)
        u = torch.rand(len(tokens), generator=self.generator)
        widen = tuple(bool(ok and x < 0.5) for ok, x in zip(mask, u))
        n = sum(mask)
        return WiderDecision(tokens, widen, -n * math.log(2), n * math.log(2))

    def sample_deeper(self, tokens: Sequence[LayerToken]) -> DeeperDecision:
        tokens = self._check_tokens(tokens)
        points = self._deepenable(tokens)
        valid_blocks = [j for j, b in enumerate(points) if any(b)]
        block = valid_blocks[self._uniform(len(valid_blocks))]
        valid_layers = [i for i, ok in enumerate(points[block]) if ok]
        layer = valid_layers[self._uniform(len(valid_layers))]
        log_n = math.log(len(valid_blocks)) + math.log(len(valid_layers))
        kernel = None
        if tokens[blocks(tokens)[block][layer]].kind == "conv":
            kernel = self.space.kernels[self._uniform(len(self.space.kernels))]
            log_n += math.log(len(self.space.kernels))
        return DeeperDecision(tokens, block, layer, kernel, -log_n, log_n)

    def update(self, episodes: Sequence[Episode]) -> dict[str, float]:
        episodes = list(episodes)
        mean, used, after = self._advance_baseline([e.reward for e in episodes])
        entropy = sum(d.entropy for e in episodes for d in e.decisions) / len(episodes)
        return {"mean_reward": mean, "baseline": after, "baseline_used": used, "loss": 0.0, "entropy": entropy}


def make_policy(strategy: str, space: SearchSpace, seed: int = 0) -> Policy:
    """``"rl"`` (alias ``"reinforce"``) or ``"random"``."""
    if strategy in ("rl", "reinforce"):
        return ReinforcePolicy(space, seed)
    if strategy == "random":
        return RandomPolicy(space, seed)
    raise ControllerError(f"unknown search strategy {strategy!r}: use 'rl' or 'random'")


def simulate_episode(policy: Policy, tokens: Sequence[LayerToken], n_wider: int = N_WIDER,
                     n_deeper: int = N_DEEPER) -> tuple[list[Decision], list[LayerToken]]:
    """Sample one network on the token simulator: n_wider Net2Wider then n_deeper Net2Deeper actions.

    The search does the same with IR passes in place of ``apply``; tests and synthetic rewards use this.
    """
    tokens = list(tokens)
    decisions: list[Decision] = []
    for _ in range(n_wider):
        d = policy.sample_wider(tokens)
        decisions.append(d)
        tokens = d.apply(policy.space)
    for _ in range(n_deeper):
        d = policy.sample_deeper(tokens)
        decisions.append(d)
        tokens = d.apply()
    return decisions, tokens
