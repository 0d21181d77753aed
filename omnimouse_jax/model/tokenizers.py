"""Input tokens: neuron identity (the per-session tables), response conv tokens, behavior channel tokens.

The neuron table has one row per neuron of every session (a session owns a contiguous row range); only the rows
of the batch's neurons are gathered, so the table can be sharded along its rows. Session and animal embeddings
live in the same space and share the projection to d_model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omnimouse_jax.parallel.sharding import partitioned, take_rows

_TABLE_INIT = nnx.initializers.normal(0.02)


def _write_block(param: nnx.Param, index, values) -> None:
    """param[index] = values, keeping the parameter's dtype and sharding."""
    old = param[...]
    param.set_value(jax.device_put(old.at[index].set(jnp.asarray(values, old.dtype)), old.sharding))


class NeuronIdentity(nnx.Module):
    """Per-session parameters: neuron embeddings and biases, session and animal embeddings; with `offsets`, each
    neuron's response offset (the level the population decoder measures its deviations from); with
    `receptive_fields`, each neuron's spatio-temporal receptive field (x, y, log size, lag, log duration), which the
    decoder's prior reads (OmniMouse.receptive_fields); with `video_readout` = (cells, channels), each neuron's
    factorized video readout: a signed spatial map over every video stage's cells, a weight per channel and a
    lag (OmniMouse._video_readout); with `decoder_channels`, each neuron's own weight per behavior channel in the
    population decoder."""

    TABLES = ("neuron_table", "neuron_bias", "neuron_offset", "neuron_rf", "neuron_video_map",
              "neuron_video_features", "neuron_video_lag", "neuron_decoder", "session_table", "animal_table")
    # Grown rows start at zero (no offset, the frame's centre, an empty video map, the initial lag), except the tables
    # in self.random_inits, which start as at construction.

    def __init__(self, num_neuron_rows: int, num_sessions: int, num_animals: int, d_embed: int, d_model: int, *,
                 dtype, rngs: nnx.Rngs, offsets: bool = False, receptive_fields: bool = False,
                 video_readout: tuple[int, int] | None = None, decoder_channels: int = 0):
        def table(init, shape, *axes):
            return nnx.Param(partitioned(init, *axes)(rngs.params(), shape))

        # Embeddings start at std d_embed^-0.5, as in the paper's code (unit-norm rows): a neuron's identity is then
        # as large in the decoder's queries as what they read, so neurons differ from the first step.
        self.embed_init = nnx.initializers.normal(d_embed ** -0.5)
        self.neuron_table = table(self.embed_init, (num_neuron_rows, d_embed), "neuron_rows", "neuron_embed")
        self.neuron_bias = table(nnx.initializers.zeros_init(), (num_neuron_rows,), "neuron_rows")
        self.neuron_offset = table(nnx.initializers.zeros_init(), (num_neuron_rows,), "neuron_rows") if offsets else None
        self.neuron_rf = table(nnx.initializers.zeros_init(), (num_neuron_rows, 5), "neuron_rows",
                               None) if receptive_fields else None
        if video_readout:
            cells, channels = video_readout
            # Channel weights of norm about one: the readout's output starts at the scale of one channel.
            self.video_features_init = nnx.initializers.normal(channels ** -0.5)
            zeros = nnx.initializers.zeros_init()
            self.neuron_video_map = table(zeros, (num_neuron_rows, cells), "neuron_rows", None)
            self.neuron_video_features = table(self.video_features_init, (num_neuron_rows, channels), "neuron_rows",
                                               None)
            self.neuron_video_lag = table(zeros, (num_neuron_rows,), "neuron_rows")
        else:
            self.video_features_init = self.neuron_video_map = self.neuron_video_features = None
            self.neuron_video_lag = None
        self.neuron_decoder = table(nnx.initializers.zeros_init(), (num_neuron_rows, decoder_channels), "neuron_rows",
                                    None) if decoder_channels else None
        self.session_table = table(self.embed_init, (num_sessions, d_embed), "sessions", "neuron_embed")
        self.animal_table = table(self.embed_init, (num_animals, d_embed), "animals", "neuron_embed")
        self.project = nnx.Linear(d_embed, d_model, dtype=dtype, param_dtype=jnp.float32,
                                  kernel_init=partitioned(nnx.initializers.lecun_normal(), "neuron_embed", "embed"),
                                  bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

    def embed(self, neuron_index_BxN, session_index_B, animal_index_B) -> jax.Array:
        """(B, N, d_embed): neuron + session + animal embeddings."""
        rows = take_rows(self.neuron_table[...], neuron_index_BxN, "neuron_rows")
        return rows + self.meta(session_index_B, animal_index_B)[:, None]

    def meta(self, session_index_B, animal_index_B) -> jax.Array:
        """(B, d_embed): session + animal embeddings."""
        return (jnp.take(self.session_table[...], session_index_B, axis=0)
                + jnp.take(self.animal_table[...], animal_index_B, axis=0))

    def bias(self, neuron_index_BxN) -> jax.Array:
        return take_rows(self.neuron_bias[...], neuron_index_BxN, "neuron_rows")

    def offset(self, neuron_index_BxN) -> jax.Array:
        return take_rows(self.neuron_offset[...], neuron_index_BxN, "neuron_rows")

    def receptive_field(self, neuron_index_BxN) -> jax.Array:
        """(B, N, 5) raw receptive-field parameters; OmniMouse.receptive_fields gives them their units."""
        return take_rows(self.neuron_rf[...], neuron_index_BxN, "neuron_rows")

    def video_readout(self, neuron_index_BxN) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(map (B, N, cells), channel weights (B, N, channels), raw lag (B, N)) of the factorized video readout."""
        return tuple(take_rows(t[...], neuron_index_BxN, "neuron_rows")
                     for t in (self.neuron_video_map, self.neuron_video_features, self.neuron_video_lag))

    def decoder_weights(self, neuron_index_BxN) -> jax.Array:
        """(B, N, channels): each neuron's own weights in the population decoder."""
        return take_rows(self.neuron_decoder[...], neuron_index_BxN, "neuron_rows")

    def set_mean_rates(self, rates_R: np.ndarray, beta: float, start_row: int = 0) -> None:
        """Sets the bias of rows [start_row, start_row + R) so that a zero readout predicts `rates_R` through the
        Softplus(beta) head, and their offsets (if any) to `rates_R`. With zero biases a fresh model predicts
        softplus(0) / beta (6.9 at beta 0.1) for every neuron; starting each neuron at its mean rate spares the first
        thousands of steps of walking the biases there."""
        rates = np.maximum(np.asarray(rates_R, np.float64), 1e-3)  # silent neurons: a small positive rate
        # Inverse of softplus(beta x) / beta, written to stay finite for large rates.
        bias = (beta * rates + np.log(-np.expm1(-beta * rates))) / beta
        stop = start_row + len(bias)
        if stop > self.neuron_bias.shape[0]:
            raise ValueError(f"set_mean_rates: rows [{start_row}, {stop}) outside the table's "
                             f"{self.neuron_bias.shape[0]} rows")
        _write_block(self.neuron_bias, np.s_[start_row:stop], bias)
        if self.neuron_offset is not None:
            _write_block(self.neuron_offset, np.s_[start_row:stop], rates_R)

    def set_rows(self, table: str, values: np.ndarray, start_row: int = 0) -> None:
        """Sets rows [start_row, start_row + len(values)) of `table` (one of TABLES) to `values`."""
        param = getattr(self, table)
        if param is None or start_row + len(values) > param.shape[0] or np.shape(values)[1:] != param.shape[1:]:
            raise ValueError(f"set_rows: {np.shape(values)} at row {start_row} does not fit {table} "
                             f"{None if param is None else tuple(param.shape)}")
        _write_block(param, np.s_[start_row:start_row + len(values)], values)

    def set_leading_dims(self, values_RxC: np.ndarray, start_row: int = 0) -> None:
        """Sets the first C embedding dimensions of rows [start_row, start_row + R) to `values_RxC`; the other
        dimensions keep their random initialization."""
        rows, dims = np.shape(values_RxC)
        if start_row + rows > self.neuron_table.shape[0] or dims > self.neuron_table.shape[1]:
            raise ValueError(f"set_leading_dims: {(rows, dims)} at row {start_row} does not fit the table "
                             f"{tuple(self.neuron_table.shape)}")
        _write_block(self.neuron_table, np.s_[start_row:start_row + rows, :dims], values_RxC)

    def random_inits(self) -> dict:
        """{table: initializer} of the tables whose rows start random; every other table's rows start at zero."""
        return {"neuron_table": self.embed_init, "neuron_video_features": self.video_features_init,
                "session_table": self.embed_init, "animal_table": self.embed_init}

    @classmethod
    def table_rows(cls, num_neuron_rows: int, num_sessions: int, num_animals: int) -> dict[str, int]:
        """{table: its row count} for every name in TABLES."""
        owner = {"neuron": num_neuron_rows, "session": num_sessions, "animal": num_animals}
        return {name: owner[name.split("_")[0]] for name in cls.TABLES}

    def grow(self, num_neuron_rows: int, num_sessions: int, num_animals: int, rngs: nnx.Rngs) -> None:
        """Appends freshly initialized rows so new sessions and animals can be added; existing rows are kept. New
        rows of the randomly initialized tables start as at construction, the others at zero."""
        for name, size in self.table_rows(num_neuron_rows, num_sessions, num_animals).items():
            param = getattr(self, name)
            if param is None:
                continue
            old = param[...]
            if size < old.shape[0]:
                raise ValueError(f"cannot shrink {name} from {old.shape[0]} to {size} rows")
            init = self.random_inits().get(name, nnx.initializers.zeros_init())
            fresh = init(rngs.params(), (size - old.shape[0],) + old.shape[1:], old.dtype)
            param.set_value(jnp.concatenate([old, fresh], axis=0))


class ResponseTokenizer(nnx.Module):
    """Temporal conv over each neuron's trace: (B, T, N) -> tokens (B, K, N, D), K = (T - window) // stride + 1.

    The conv sees the masked trace and the visibility mask as two channels, so a hidden sample is an explicit
    'unknown' rather than a zero response.
    """

    def __init__(self, window: int, stride: int, d_model: int, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, d_model, (window,), (stride,), padding="VALID", dtype=dtype, param_dtype=jnp.float32,
                             kernel_init=partitioned(nnx.initializers.lecun_normal(), None, None, "embed"),
                             bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

    def __call__(self, responses_BxTxN, visible_BxTxN) -> jax.Array:
        b, t, n = responses_BxTxN.shape
        vis = visible_BxTxN.astype(jnp.float32)
        # Multiplying by the mask makes hidden samples contribute exactly zero gradient.
        x = jnp.stack([responses_BxTxN * vis, vis], axis=-1)  # (B, T, N, 2)
        x = x.transpose(0, 2, 1, 3).reshape(b * n, t, 2)
        tokens = self.conv(x)  # (B*N, K, D)
        return tokens.reshape(b, n, -1, tokens.shape[-1]).transpose(0, 2, 1, 3)


class BehaviorTokenizer(nnx.Module):
    """One token per behavior channel: a linear map of the channel's whole trace plus a channel embedding; a
    hidden or absent channel gets the shared missing-behavior embedding instead."""

    def __init__(self, num_channels: int, num_samples: int, d_model: int, *, rngs: nnx.Rngs):
        key = rngs.params
        scale = 1.0 / np.sqrt(num_samples)
        self.trace_map = nnx.Param(partitioned(nnx.initializers.normal(scale), "channels", "samples", "embed")(
            key(), (num_channels, num_samples, d_model)))
        self.channel_embed = nnx.Param(partitioned(_TABLE_INIT, "channels", "embed")(key(), (num_channels, d_model)))
        self.missing = nnx.Param(partitioned(_TABLE_INIT, "embed")(key(), (d_model,)))

    def __call__(self, behavior_BxTxC, visible_BxC) -> jax.Array:
        vis = visible_BxC.astype(jnp.float32)
        tokens = jnp.einsum("btc,ctd->bcd", behavior_BxTxC * vis[:, None, :], self.trace_map[...])
        tokens = jnp.where(visible_BxC[..., None], tokens, self.missing[...])
        return tokens + self.channel_embed[...]
