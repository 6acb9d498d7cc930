# import profile: top cumulative entries
python3 -X importtime -c "import torch; import colossalai.booster; from vit_train.trainer import Trainer" 2> /tmp/imp.txt
python3 - <<'PY'
rows = []
for line in open("/tmp/imp.txt"):
    if not line.startswith("import time:") or "self" in line: continue
    _, selfus, cum, name = [x.strip() for x in line.split("|", 0)[0].replace("import time:", "").split("|")] if False else [None] + [x.strip() for x in line.replace("import time:", "").split("|")]
    rows.append((int(cum), int(selfus), name))
print("total self s", sum(r[1] for r in rows) / 1e6)
tops = [r for r in rows if not r[2].startswith(" ")]
print("top level:", [(r[2], round(r[0] / 1e6, 2)) for r in sorted(tops, reverse=True)[:8]])
for r in sorted(rows, reverse=True)[:45]: print(f"{r[0]/1e6:7.2f} {r[1]/1e6:6.2f} {r[2]}")
PY
