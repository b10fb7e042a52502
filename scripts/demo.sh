#!/usr/bin/env bash
# The main job from a fresh clone: set up, export a VAE, and send one picture through the codec.
#   scripts/demo.sh [MODEL] [IMAGE]
# MODEL: a Hugging Face id (default stabilityai/sd-vae-ft-mse), a diffusers folder or a weights file.
# IMAGE: any picture (default: a Kodak image from ../shared when present, else one drawn here).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-stabilityai/sd-vae-ft-mse}"
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
.venv/bin/python -m export build --model "$model" --name demo --out demo/models
export SDLITE_MODELS_DIR=demo/models
.venv/bin/sdlite encode "$image" -o demo/photo.sdc
.venv/bin/sdlite info demo/photo.sdc
.venv/bin/sdlite decode demo/photo.sdc -o demo/photo.png
echo "decoded picture: demo/photo.png"
