#!/usr/bin/env bash
# The main job from a fresh clone: set up, export a VAE, and send one picture through the codec.
#   scripts/demo.sh [MODEL] [IMAGE]
# MODEL: a Hugging Face id, a diffusers folder or a weights file. Without it the demo exports
#   stabilityai/sd-vae-ft-mse from the hub, or, where the hub is out of reach, the pretrained TAEF2
#   weights in ../shared/models/taef2 when they are there.
# IMAGE: any picture (default: a Kodak image from ../shared when present, else one drawn here).
# The model goes to models/demo, where `sdlite` run from this folder finds it: afterwards
# `.venv/bin/sdlite encode PICTURE` (or `source .venv/bin/activate`, then `sdlite ...`) uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
default_model=stabilityai/sd-vae-ft-mse
offline_model=../shared/models/taef2
model="${1:-$default_model}"
image="${2:-../shared/data/kodak/kodim23.png}"
scripts/setup.sh
mkdir -p demo
if [ ! -f "$image" ]; then
  image=demo/input.png
  .venv/bin/python -c "
from PIL import Image, ImageDraw
picture = Image.linear_gradient('L').resize((512, 512)).convert('RGB')
ImageDraw.Draw(picture).ellipse((128, 96, 400, 368), fill=(200, 90, 40))
picture.save('$image')"
fi
export_model() { .venv/bin/python -m export build --model "$1" --name demo --out models; }
if ! export_model "$model"; then
  if [ -n "${1:-}" ] || [ ! -d "$offline_model" ]; then exit 1; fi
  echo "demo: using the TAEF2 weights in $offline_model instead" >&2
  export_model "$offline_model"
fi
.venv/bin/sdlite encode "$image" -o demo/photo.sdc --model models/demo --force
.venv/bin/sdlite info demo/photo.sdc
.venv/bin/sdlite decode demo/photo.sdc -o demo/photo.png --model models/demo --force
echo "decoded picture: demo/photo.png"
echo "model installed in models/demo: from this folder, run .venv/bin/sdlite (or source .venv/bin/activate, then sdlite)"
