"""IsoFLOP fitting recovers known exponents from synthetic Chinchilla-style losses."""
import json

import numpy as np
import pytest

from mmpretrain.scaling import fit

E, A, ALPHA = 1.7, 400.0, 0.34
MATCHED_AT = 1e19          # both modalities' optima coincide at this budget


def optimal_n(budget: float, beta: float, b: float) -> float:
  """Chinchilla's closed form: N_opt = G·(C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β))."""
  g = (ALPHA * A / (beta * b)) ** (1 / (ALPHA + beta))
  return g * (budget / 6) ** (beta / (ALPHA + beta))


def data_term(beta: float) -> float:
  """The B that puts this modality's optimum where text's (β 0.30, B 2000) is at
  MATCHED_AT, so one grid of sizes brackets both (they drift apart with C)."""
  n = optimal_n(MATCHED_AT, 0.30, 2000.0)
  g = n / (MATCHED_AT / 6) ** (beta / (ALPHA + beta))
  return ALPHA * A / (beta * g ** (ALPHA + beta))


def chinchilla_results(betas: dict[str, float], noise: float, seed: int = 0) -> list[dict]:
  """One model's runs on an IsoFLOP grid — 9 sizes spanning ×/÷ 6 around the geometric mean
  of the modalities' optima, 4 budgets — whose per-modality losses follow
  L = E + A/N^α + B/D^β with D = C / (6N), times (1 + noise)."""
  rng = np.random.default_rng(seed)
  results = []
  for budget in (1e18, 1e19, 1e20, 1e21):
    centre = np.exp(np.mean([np.log(optimal_n(budget, beta, data_term(beta)))
                             for beta in betas.values()]))
    for n in centre * np.geomspace(1 / 6, 6, 9):
      d = budget / (6 * n)
      losses = {m: (E + A / n ** ALPHA + data_term(beta) / d ** beta)
                   * (1 + noise * rng.standard_normal()) for m, beta in betas.items()}
      results.append({"name": f"{budget:.0e}_{n:.3g}", "budget": budget, "params": n,
                      "tokens": d, "eval": {f"{m}/loss": v for m, v in losses.items()}})
  return results


def test_fit_recovers_the_exponents_of_each_modality():
  # D_opt ∝ C^{α/(α+β)}: the paper's 0.53 (text) and 0.63 (vision).
  betas = {"text": ALPHA * 0.47 / 0.53, "vision": ALPHA * 0.37 / 0.63}
  result = fit.fit_results(chinchilla_results(betas, noise=0.002),
                           {m: f"eval.{m}/loss" for m in betas}, samples=200)
  for modality, beta in betas.items():
    m = result["modalities"][modality]
    want_a, want_b = beta / (ALPHA + beta), ALPHA / (ALPHA + beta)
    assert m["n_opt_exponent"] == pytest.approx(want_a, abs=0.03)
    assert m["d_opt_exponent"] == pytest.approx(want_b, abs=0.03)
    for key, want in (("n_opt_ci95", want_a), ("d_opt_ci95", want_b)):
      low, high = m[key]
      assert high - low < 0.05                       # informative at this noise
      assert low - 0.01 <= want <= high + 0.01       # bootstrap over 9 runs runs a bit narrow
    assert all(o["inside"] for o in m["optima"])
  gap = result["modalities"]["vision"]["d_opt_exponent"] - result["modalities"]["text"][
      "d_opt_exponent"]
  assert gap == pytest.approx(0.10, abs=0.04)            # the asymmetry the fit must see


def test_a_parabola_vertex_is_exact_on_a_parabola():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  assert fit.parabola_vertex(x, 2 * (x - 2.5) ** 2 + 0.7) == pytest.approx((2.5, 0.7))
  assert fit.parabola_vertex(x, -(x - 2.5) ** 2) is None   # no minimum


def test_too_few_budgets_name_the_fix():
  results = [r for r in chinchilla_results({"text": 0.3}, 0.0) if r["budget"] == 1e18]
  with pytest.raises(ValueError, match="add budgets or sizes"):
    fit.fit_results(results, {"text": "eval.text/loss"})


def test_write_fit_writes_tables_and_plots(tmp_path):
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n"
                          for r in chinchilla_results({"text": 0.3, "vision": 0.2}, 0.002)))
  out = fit.write_fit(str(path), {"text": "eval.text/loss", "vision": "eval.vision/loss"},
                      samples=20)["out"]
  assert sorted(p.name for p in (tmp_path / "fit").iterdir()) == [
      "fit.json", "fit.md", "isoflops.png", "optima.png"]
  assert "| text |" in (tmp_path / "fit" / "fit.md").read_text() and out.endswith("fit")
