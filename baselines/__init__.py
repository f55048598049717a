"""The paper's comparison systems that are not generators of policy parameters, one file each (run them as
`python baselines/<name>.py`): Prompt-DT and MT-BC, trained on `offline_data.py`'s episodes."""
