"""Seed: "in a text CNN, must the kernel size equal the embedding size?"

No: a Conv1d over embeddings treats the embedding dimension as input *channels* (always fully used),
and the kernel size is how many consecutive words a filter sees — any value. This builds the seed's
model, Embedding → three Conv1d with kernel sizes 2, 3 and 4 → global max pool → concatenate → Linear,
runs it on a batch of sentences and prints ``cnnkit.summary`` of it (weights in torch and Keras layout).
"""

import argparse

import torch
from torch import nn

import cnnkit


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int = 1000, embedding_dim: int = 5, channels: int = 2,
                 kernel_sizes=(2, 3, 4), num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, channels, k) for k in kernel_sizes)
        self.classifier = nn.Linear(channels * len(kernel_sizes), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens).transpose(1, 2)                # (N, L, E) -> (N, E, L): E = channels
        pooled = [torch.relu(conv(x)).amax(dim=2) for conv in self.convs]  # global max pool over words
        return self.classifier(torch.cat(pooled, dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example-output", help="output folder (unused here)")
    parser.parse_args()

    torch.manual_seed(0)
    model = TextCNN()
    sentences = torch.randint(0, 1000, (4, 7))                   # 4 sentences of 7 words
    print(f"tokens {tuple(sentences.shape)} -> logits {tuple(model(sentences).shape)}")
    for conv in model.convs:
        keras_kernel = tuple(cnnkit.keras.to_keras(conv)["kernel"].shape)
        print(f"Conv1d kernel_size={conv.kernel_size[0]}: torch weight {tuple(conv.weight.shape)} "
              f"(filters, embedding channels, words); Keras kernel {keras_kernel}")
    summary = cnnkit.summary(model, (7,), dtype=torch.long)
    print(summary)
    total = sum(p.numel() for p in model.parameters())
    print(f"parameters: {total:,}")


if __name__ == "__main__":
    main()
