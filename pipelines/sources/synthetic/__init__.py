"""The embedded synthetic miniature MMEB: a seeded generator that writes 14 small datasets in exactly
the Hugging Face Hub layout and formats of TIGER-Lab/MMEB-train and TIGER-Lab/MMEB-eval.

    out_dir/MMEB-train/README.md                                       card with a `configs:` header
    out_dir/MMEB-train/<Subset>/original-00000-of-00001.parquet        qry, qry_image_path, pos_text,
    out_dir/MMEB-train/<Subset>/diverse_instruction-00000-of-00001.parquet   pos_image_path, neg_text,
                                                                        neg_image_path (all strings)
    out_dir/MMEB-train/images_zip/<Subset>.zip                          <Subset>/Train/<file> (rows:
                                                                        images/<Subset>/Train/<file>)
    out_dir/MMEB-eval/README.md
    out_dir/MMEB-eval/<Dataset>/test-00000-of-00001.parquet            qry_text, qry_img_path (string),
                                                                        tgt_text, tgt_img_path (list)
    out_dir/MMEB-eval/images.zip                                        <Dataset>/<file>

Only the dataset names (prefix `Syn-`, registry: `pipelines.mmeb.SYNTHETIC`) tell it from the real
thing. The quirks are reproduced on purpose: `<|image_1|>\\n` after the image token, queries ending in
`\\n`, VisDial dialogues ending `\\n\\n`, the stray image token of WebQA's text-only queries, crop file
names with spaces, the eval grounding instruction "Crop the image to to isolate ..." (sic), and
`diverse_instruction` built the way VLM2Vec built the real one: instruction-only queries are replaced
whole, otherwise only the instruction prefix (the length of the original instruction) is swapped;
`pos_*`/`neg_*` never change.

Content is learnable and needs the image: Pillow draws 1-3 objects (8 shapes x 8 colours, 5 positions,
2 sizes) on light backgrounds, or short words; every label, caption, answer and dialogue is derived
from what was drawn. A fixed set of 16 colour-shape combinations (`scenes.HELD_OUT`) never appears in
any train image or text; only Syn-ShapeCLS-Unseen uses it. Syn-ShapeVQA-NewInst uses an instruction
never used in train. Eval images are fresh renderings from their own random streams.

Every output file is byte-deterministic for a seed: per-dataset `random.Random` streams seeded by
strings, JPEG (quality 90, 4:4:4) / PNG with fixed settings, parquet via pyarrow without timestamps,
zip entries sorted with a fixed date and fixed attributes.

The modules, by job:
    scenes        the visual vocabulary, layouts and Pillow rendering
    instructions  each dataset's instructions and target prompts; the diverse_instruction phrasings
    datasets      the 14 dataset builders: seeded streams to examples (images and texts)
    rows          examples to MMEB-train columns and MMEB-eval candidate lists
    zips          image encoding and byte-stable zip archives
    hub_layout    parquet files, README cards and `generate`, which writes it all

CLI: `python -m pipelines.sources.synthetic OUT_DIR [--seed 0] [--train-rows 240] ...`
"""

from pipelines.sources.synthetic.hub_layout import generate

__all__ = ["generate"]
