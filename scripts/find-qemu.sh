#!/usr/bin/env bash
# Prints the path of a qemu user-mode emulator for the given architecture.
arch="${1:?arch}"
for c in "qemu-$arch-static" "qemu-$arch"; do
  if p=$(command -v "$c"); then echo "$p"; exit 0; fi
done
exit 1
