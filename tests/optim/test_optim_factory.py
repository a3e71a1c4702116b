"""The optimizer factory: schedules peak at learning_rate, clipping, decoupled weight decay on matrices only."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import optim


def _config(**overrides):
  config = optim.default_config()
  config.update(overrides)
  return config


@pytest.mark.parametrize("schedule, at_end", [("cosine", 0.1), ("linear", 0.1), ("constant", 1.0),
                                              ("noam", np.sqrt(10 / 100))])
def test_schedules_warm_up_to_the_peak(schedule, at_end):
  _, lr = optim.make_optimizer(_config(schedule=schedule, warmup_steps=10, learning_rate=2.0,
                                       end_learning_rate_factor=0.1), total_steps=100)
  assert float(lr(10)) == pytest.approx(2.0)
  assert float(lr(5)) == pytest.approx(1.0)
  assert float(lr(100)) == pytest.approx(2.0 * at_end, rel=1e-5)


def test_schedule_steps_override_total_steps():
  _, lr = optim.make_optimizer(_config(warmup_steps=0, schedule_steps=50), total_steps=1000)
  assert float(lr(50)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_skips_vectors():
  config = _config(schedule="constant", warmup_steps=0, learning_rate=1.0, weight_decay=0.5, b1=0.0, b2=0.0)
  tx, _ = optim.make_optimizer(config, total_steps=10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.5)  # decayed: -lr * weight_decay * param
  np.testing.assert_allclose(updates["bias"], 0.0)  # not decayed


def test_clipping_comes_first_in_the_chain():
  params = {"kernel": jnp.ones((2, 2))}
  clipped, _ = optim.make_optimizer(_config(), total_steps=1000, max_grad_norm=1.0)
  unclipped, _ = optim.make_optimizer(_config(), total_steps=1000, max_grad_norm=0.0)
  assert len(clipped.init(params)) == 2 and len(unclipped.init(params)) == 1
  huge = {"kernel": jnp.full((2, 2), 1e6)}
  first_stage, _ = clipped.update(huge, clipped.init(params), params)
  assert np.isfinite(first_stage["kernel"]).all()


def test_unknown_names_fail():
  with pytest.raises(ValueError, match="config.optimizer.name='sgdx' is unknown"):
    optim.make_optimizer(_config(name="sgdx"), total_steps=10)
  with pytest.raises(ValueError, match="warmup_steps=20 must lie in"):
    optim.make_optimizer(_config(warmup_steps=20), total_steps=10)


def test_clipping_during_a_freeze_measures_the_trainable_gradients_only():
  """A frozen encoder's gradient must not shrink the head's clipped step (the defect: it counted in the norm)."""
  config = _config(schedule="constant", warmup_steps=0, learning_rate=1.0, b1=0.0, b2=0.0, weight_decay=0.0)
  params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  grads = {"encoder": {"kernel": jnp.full((2, 2), 100.0)}, "head": {"kernel": jnp.full((2, 2), 0.3)}}
  is_encoder = lambda path: path[0].key == "encoder"
  frozen_tx = optim.freeze_for_steps(optim.make_optimizer(config, total_steps=10, max_grad_norm=0.5)[0], 1,
                                     is_encoder)
  updates, state = frozen_tx.update(grads, frozen_tx.init(params), params)
  np.testing.assert_array_equal(updates["encoder"]["kernel"], 0.0)
  # Adam (b2 = 0) keeps the squared clipped gradient: the head's, 0.3 per entry (norm 0.6) clipped to norm 0.5. Had
  # the encoder's gradient (norm 200) counted, the head's would have shrunk 400-fold.
  nu = state.inner[1][0].nu
  np.testing.assert_allclose(nu["head"]["kernel"], (0.3 * 0.5 / 0.6) ** 2, rtol=1e-5)
  np.testing.assert_array_equal(nu["encoder"]["kernel"], 0.0)
  # After the freeze the encoder trains with the full gradient.
  updates, _ = frozen_tx.update(grads, state, params)
  assert np.all(np.asarray(updates["encoder"]["kernel"]) < 0)
