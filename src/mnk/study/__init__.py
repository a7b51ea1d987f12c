"""Stage 5, the study: the config in, the plan, the solves and the tables out.

Takes the validated config once (`config.parse_config`: frozen sections for every other
module; `config_checks` refuses what cannot work, before any download); gives the kernel plan
(`plan`), its blocks (`blocks`), MNK's model selection and the no-meta baselines
(`selection`), the summary, per-task and paired tables and figures (`results`) and projected
cost (`cost`). The only stage that may import every other.
"""
