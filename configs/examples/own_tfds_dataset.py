"""Point a stream at your own TFDS dataset (array_record), e.g. captioned images on a bucket.

Prepare it anywhere TFDS can (`tfds build --file_format=array_record`, or a
GeneratorBasedBuilder like mmpretrain/data/builders.py), copy `<name>/<version>/` under
`data_dir`, and map its fields onto what the stream reads (image_text: image + caption;
text: text; video: frames [+ fps]; action_video: frames + actions [+ mission]). Images may
be encoded bytes (PNG/JPEG) or uint8 arrays; they are resized to data.image_size.

  mmpretrain prepare --config=configs/examples/own_tfds_dataset.py   # checks it is readable
  mmpretrain train --config=configs/examples/own_tfds_dataset.py --workdir=runs/own \\
      --config.data.datasets.my_captions.data_dir=gs://my-bucket/tfds
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import demo  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = demo.get_config(arg)
  c.data.datasets.my_captions = {
      "tfds_name": "my_captions",        # the directory name TFDS wrote
      "data_dir": "",                    # '' = config.data.data_dir
      "version": "",                     # '' = the newest prepared version
      "train_split": "train", "eval_split": "validation",
      "fields": {"image": "jpeg_bytes", "caption": "alt_text"},
  }
  # Half MNIST, half your captions inside the image–text stream.
  c.data.streams.image_text.datasets = {"mnist_captions": 1.0, "emoji_captions": 0.0,
                                        "my_captions": 1.0}
  return c
