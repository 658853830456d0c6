"""Stage 3, plan: a traced site turned into the arguments of glacompiler.attention_with_kvcache.

match.py      a found site matched against the op's math (softmax form or SDPA), or Decline
site_plan.py  the SitePlan: which view of which graph tensor becomes each argument
"""
