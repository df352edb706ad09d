#!/usr/bin/env bash
# The main job on the built-in default, nothing downloaded: build a tiny Eagle-X5 (all five experts),
# write it as a Hub-ready folder, and answer a question about a generated image through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${EAGLE_VENV:-.venv}"
OUT="${1:-eagle-x5-tiny}"
"$VENV/bin/eagle" init --preset eagle-x5-tiny --output "$OUT" --force
"$VENV/bin/python" -c "from PIL import Image, ImageDraw; im = Image.new('RGB', (320, 240), 'white'); \
ImageDraw.Draw(im).ellipse((100, 60, 220, 180), fill='red'); im.save('$OUT/example.png')"
"$VENV/bin/eagle" generate --model "$OUT" --image "$OUT/example.png" --prompt "What colour is the circle?" \
  --max-new-tokens 8
echo "model folder: $OUT (random weights: the answer is noise until trained)"
