"""Versions of what each pipeline stage computes (torch-free: the report reads them too).

Bump a stage's version when its code changes what it computes: old artifacts are then
ignored instead of silently reused, and ``marginbench tables`` leaves out run records whose
margins an older version computed (it says how many and how to refresh them).
"""

MARGINS_VERSION = 4  # 2: boundary points failing verification by rounding are backed off, not dropped;
# 3: per-sample "escalated" (attack families tried on samples the estimator left unbroken),
# "lower_bound" and "status" (certified by attack=exact; 0 and "attack" for attacks)
# 4: per-sample "agreement" (searches within 1 % of the margin: multistart.py, ensemble.py)
# The multi-start stage's own version, in the margins key of multi-start estimators only (a
# MARGINS_VERSION bump would also retire every other estimator's margins, the demo's included).
MULTISTART_VERSION = 4  # 2: candidates skip the class the best point already lands in;
# 3: the linear order ranks only the 20 strongest runner-ups by logit (>21 classes change)
# 4: the searches towards several targets run stacked in one call (same L-inf starts,
# other float sums and L2 starts: margins within ~1e-5, a few samples move on the oracle)
OUTPUTS_VERSION = 1
PSEUDO_VERSION = 1
SCORES_VERSION = 1
RUNS_VERSION = 6  # 2: summary "attack" names the preset; 3: summary records these versions;
# 4: summary robust_accuracy_interval and scores; samples.csv prob_margin, max_softmax, neg_entropy
# 5: samples.csv first_order_margin, neg_grad_norm, score_seconds (gradient scores stage)
# 6: samples.csv margin_agreement

STAGE_VERSIONS = {
    "margins": MARGINS_VERSION,
    "outputs": OUTPUTS_VERSION,
    "pseudo": PSEUDO_VERSION,
    "scores": SCORES_VERSION,
    "runs": RUNS_VERSION,
}
