"""Train state pytree, optimisers from config, and the generic pure train/eval steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

# loss_fn(params, model_state, batch, key, train, frozen)
#   -> (per_sample_loss [B], (new_model_state, metrics)); `frozen` = networks read, never trained.
LossFn = Callable[[Any, Any, dict, jax.Array, bool, Any], tuple[jax.Array, tuple[Any, dict]]]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; the optimiser itself is static."""
  step: jax.Array  # [] int32
  params: Any
  model_state: Any  # non-optimised variables the loss reads and may update (BatchNorm statistics;
  # stage II's drifting cDDPM statistics under faithful Q6); {} when there are none
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               model_state=variables.get("model_state", {}), opt_state=tx.init(params), tx=tx)


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam / AdamW per METHOD (no schedule, no clipping unless configured)."""
  if opt.name == "adam":
    tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  elif opt.name == "adamw":
    tx = optax.adamw(opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=opt.weight_decay)
  else:
    raise ValueError(f"unknown optimizer {opt.name!r}; expected 'adam' or 'adamw'")
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def make_train_step(loss_fn: LossFn) -> Callable:
  """A pure step `(state, batch, key, frozen) -> (state, metrics)`; randomness = fold_in(key, step).

  `frozen` is the task's pytree of networks that are read but never trained ({} if none).
  """

  def train_step(state: TrainState, batch: dict, key: jax.Array, frozen: Any = None):
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
      per_sample, (new_stats, metrics) = loss_fn(params, state.model_state, batch, step_key, True,
                                                 frozen)
      return jnp.mean(per_sample), (new_stats, metrics)

    (loss, (new_stats, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, model_state=new_stats,
                         opt_state=opt_state), metrics

  return train_step


def make_eval_step(loss_fn: LossFn) -> Callable:
  """`(state, batch, key, frozen) -> (sum of per-sample losses, number of valid samples)`.

  Inference mode (train=False), no parameter update; `batch['weight']` [B] marks padding rows.
  """

  def eval_step(state: TrainState, batch: dict, key: jax.Array, frozen: Any = None):
    per_sample, _ = loss_fn(state.params, state.model_state, batch, key, False, frozen)
    w = batch["weight"]
    return jnp.sum(per_sample * w), jnp.sum(w)

  return eval_step
