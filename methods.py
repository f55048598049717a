"""The names of the evaluation's rows, in one place: evaluate.py and evaluate_metaworld.py write them into
results.json, aggregate.py reads them back (without importing torch or the stages), and the printed
numbers of the paper that the tables show beside ours, marked as printed.
"""

from names import task_name  # noqa: F401 - the tables name tasks as the stages do

# Cheetah-Vel (Table IV): the generated methods, the baselines, the oracle upper bound, in table order
METHODS = ["hyplatent", "hypformer", "maa", "mt-bc", "prompt-dt", "macaw", "macaw-unadapted", "nearest-expert",
           "decoded-expert", "interpolated-expert", "parent", "oracle-expert"]
LABELS = {"hyplatent": "HypLatent (AMT-Hyp w/o HypFormer)", "hypformer": "HypLatent + HypFormer (AMT-Hyp)",
          "maa": "MAA (diffusion, Make-An-Agent)",
          "mt-bc": "MT-BC (one policy, condition as input)",
          "prompt-dt": "Prompt-DT (prompted with a test-task demonstration)",
          "macaw": "MACAW (adapted on a test-task episode)", "macaw-unadapted": "MACAW before adaptation",
          "nearest-expert": "nearest expert", "decoded-expert": "decoded nearest expert",
          "interpolated-expert": "interpolated expert", "parent": "parent",
          "oracle-expert": "oracle expert (trained at v*: upper bound)"}
# Table IV as printed (average return over the test velocities)
PAPER_ROWS = [("paper:MACAW (Iter. 0)", -121.6), ("paper:MACAW (Iter. 20K)", -60.5), ("paper:Prompt-DT", -34.43),
              ("paper:AMT-Hyp w/o HypFormer (10 seeds)", -33.44), ("paper:AMT-Hyp w/o HypFormer (35 seeds)", -29.6)]
PAPER_ROWS_NOTE = ("The printed MACAW and Prompt-DT rows come from another observation: Prompt-DT's Cheetah-Vel "
                   "observation is 20-d (qpos[1:], qvel and the torso's centre of mass, which carries x); ours is "
                   "gymnasium's 17-d HalfCheetah-v5 observation, without x.")

# MetaWorld's own rows, and the expert of a MetaWorld task is the task's own (Cheetah-Vel's is the nearest)
MW_LABELS = {**LABELS, "expert": "expert (the task's best stage-0 checkpoint)",
             "decoded-expert": "decoded expert (its autoencoder round trip)",
             "checkpoints": "all stage-0 checkpoints of the task (unseen: the oracle)",
             "decoded-checkpoints": "decoded checkpoints (their round trips)",
             "prompt-dt": "Prompt-DT (prompted with the conditioning rollout)",
             "care": "CARE (one multi-task SAC policy; context: the behaviour embedding)"}
# MetaWorld (Tables I-III): one policy per task: only more goals sharpen its rate
SINGLE = ("expert", "decoded-expert", "parent")
GENERATORS = ("hyplatent", "hypformer", "maa")  # the methods that generate policies (top-k ranks their samples)
CONDITIONED = (*GENERATORS, "mt-bc", "prompt-dt", "care")  # one policy (Prompt-DT: one prompted episode) per condition
MW_METHODS = ["hyplatent", "hypformer", "maa", "mt-bc", "prompt-dt", "care", "expert", "decoded-expert", "checkpoints", "decoded-checkpoints", "parent"]
# every MetaWorld row name: the methods, then top-k of the generated ones (picked on goals never scored)
MW_ROWS = [*MW_METHODS, *(f"{m}@top{k}" for m in GENERATORS for k in (5, 10))]
# the paper's printed success rates (%): MAA, AMT-Hyp w/o HypFormer, AMT-Hyp (Tables I and III)
PAPER_SEEN = {"window-open-v3": (33, 51, 64), "door-open-v3": (27, 35, 62), "drawer-open-v3": (42, 40, 78),
              "dial-turn-v3": (23, 36, 48), "plate-slide-v3": (45, 66, 88), "button-press-v3": (32, 38, 58),
              "handle-press-v3": (50, 62, 82), "faucet-close-v3": (45, 77, 82), "average": (36, 51, 70.3)}
PAPER_UNSEEN = {"drawer-close-v3": (55, 53, 80), "handle-press-side-v3": (4, 6, 0), "door-lock-v3": (13, 6, 6),
                "window-close-v3": (10, 0, 12), "reach-wall-v3": (13, 6, 10), "coffee-button-v3": (8, 3, 9),
                "button-press-wall-v3": (11, 2, 14), "faucet-open-v3": (16, 21, 27), "average": (16.25, 12.13, 19.8)}
# Table II: seen, unseen
PAPER_SUMMARY = [("CARE", 82.1, 58.5), ("DT", 80.3, 60.4), ("MAA", 36, 16.25),
                 ("AMT-Hyp w/o HypFormer", 51, 12.13), ("AMT-Hyp", 70.3, 19.8),
                 ("AMT-Hyp w/o HypFormer (top 10)", 100, 54.38), ("AMT-Hyp (top 10)", 100, 80.63),
                 ("AMT-Hyp w/o HypFormer (top 5)", 100, 75.1), ("AMT-Hyp (top 5)", 100, 87.5)]
