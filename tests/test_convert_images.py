"""The converters' image check agrees with what the training pipeline decodes."""

import argparse

import pytest

from kosmos import defaults
from kosmos.data import images as pipeline_images
from kosmos.data.convert import common, images

from image_files import encode, noise, png_1bit


def test_one_pixel_limit_shared_with_the_pipeline():
  parser = argparse.ArgumentParser()
  common.add_common_arguments(parser, input_help="x")
  args = parser.parse_args(["--input", "a", "--output", "b"])
  assert args.max_image_pixels == pipeline_images.DEFAULT_MAX_PIXELS == 64_000_000
  assert defaults.data().max_image_pixels == pipeline_images.DEFAULT_MAX_PIXELS


def test_image_above_the_pipeline_limit_is_dropped():
  over, at = png_1bit(8001, 8000), png_1bit(8000, 8000)  # 64.008 and 64.0 Mpx
  with pytest.raises(pipeline_images.ImageError) as e:
    pipeline_images.decode(over, 16)
  assert e.value.reason == "too_large"
  assert images.check(over) == images.IMAGE_TOO_LARGE
  assert images.check(at) is None
  small = encode(noise(17, (48, 72)))
  assert images.check(small, max_pixels=48 * 72 - 1) == images.IMAGE_TOO_LARGE
  assert images.check(small, max_pixels=48 * 72) is None
