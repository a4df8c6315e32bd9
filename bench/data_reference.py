"""PyTorch side of the data-pipeline benchmark: PIL decode + torchvision RandomResizedCrop(224,
bicubic) + flip + ToTensor + Normalize through a DataLoader with 1 and 2 workers.

    python bench/data_reference.py /tmp/kdlab-data --make --images 256   # write ~500x375 JPEGs
    python bench/data_reference.py /tmp/kdlab-data
"""
import argparse
import os
import time

import torch
from PIL import Image
from torchvision import datasets, transforms


def make(folder, count):
    os.makedirs(os.path.join(folder, "x"), exist_ok=True)
    assets = os.path.join(os.path.dirname(__file__), "..", "assets")
    photos = sorted(f for f in os.listdir(assets) if f.endswith(".jpg"))
    for i in range(count):
        img = Image.open(os.path.join(assets, photos[i % len(photos)])).convert("RGB")
        img = img.resize((500, 375), Image.BICUBIC).rotate(i % 360)
        img.save(os.path.join(folder, "x", f"{i:05d}.jpg"), quality=90)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--make", action="store_true")
    p.add_argument("--images", type=int, default=256)
    a = p.parse_args()
    if a.make:
        make(a.folder, a.images)
        return
    tf = transforms.Compose([
        transforms.RandomResizedCrop(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    ds = datasets.ImageFolder(a.folder, transform=tf)
    for workers in (1, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, drop_last=True)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(x.shape[0] for x, _ in loader)
            best = min(best, time.perf_counter() - t0)
        print(f"torchvision data pipeline, {workers} worker(s): {n / best:.1f} img/s ({n} images, best of 3)")


if __name__ == "__main__":
    main()
