"""`benchmarks/polis_factorization_control.py` on planted data: free statement vectors and rows fitted by either
optimiser recover raters who disagree, and held-out raters gain from adaptation (no Polis data needed)."""

import polis_factorization_control as control
import torch


def _planted(num_users, pairs_per_user, statement_vectors, group_weights, generator, prefix):
    """Pairs of statements ordered by a rater of one of two opposed groups (noise-free)."""
    chosen, rejected, users = [], [], []
    for u in range(num_users):
        w = group_weights[u % 2]
        for _ in range(pairs_per_user):
            a, b = torch.randint(len(statement_vectors), (2,), generator=generator).tolist()
            if a == b:
                continue
            if (statement_vectors[a] - statement_vectors[b]) @ w < 0:
                a, b = b, a
            chosen.append(a)
            rejected.append(b)
            users.append(f"{prefix}{u}")
    return torch.tensor(chosen), torch.tensor(rejected), users


def test_factorisation_recovers_opposed_raters_and_adaptation_helps():
    generator = torch.Generator().manual_seed(0)
    d, num_statements = 4, 40
    statement_vectors = torch.randn(num_statements, d, generator=generator)
    shared = torch.tensor([1.0, 0.0, 0.0, 0.0])
    group_weights = [shared + torch.tensor([0.0, 2.0, 0.0, 0.0]), shared - torch.tensor([0.0, 2.0, 0.0, 0.0])]
    train = _planted(60, 30, statement_vectors, group_weights, generator, "t")
    adaptation = _planted(20, 30, statement_vectors, group_weights, generator, "h")
    test = _planted(20, 30, statement_vectors, group_weights, generator, "h")
    held_out_votes = _planted(60, 10, statement_vectors, group_weights, generator, "t")  # the training raters' own
    parts = {
        "heldout_adaptation": {"user_id": adaptation[2]},
        "heldout_test": {"user_id": test[2]},
        "val": {"user_id": held_out_votes[2]},
    }
    pairs = {"heldout_adaptation": adaptation[:2], "heldout_test": test[:2], "val": held_out_votes[:2]}
    participants = sorted(set(train[2]))
    users = torch.tensor([participants.index(u) for u in train[2]])
    args = control.FactorizationArguments(num_features=d, full_batch_steps=300, num_train_epochs=20, batch_size=32)

    gains, own_rows = {}, {}
    for optimizer in ("full_batch", "minibatch"):
        torch.manual_seed(0)
        model = control.StatementFactorization(
            num_statements, len(participants), d, optimizer == "minibatch", generator
        )
        if optimizer == "full_batch":
            control.train_full_batch(model, train[0], train[1], users, args)
        else:
            control.train_minibatch(model, train[0], train[1], users, args, generator)
        curves = control.heldout_curves(model, parts, pairs, precisions=[1.0], seed=0)
        gains[optimizer] = curves["precision_1"][20] - curves["precision_1"][0]
        own_rows[optimizer] = control.own_row_gain(model, parts, pairs, participants)
    # The two groups cancel for the population (about chance), and 20 answers identify a rater's group.
    assert gains["full_batch"] > 20 and gains["minibatch"] > 20, gains
    assert own_rows["full_batch"] > 20 and own_rows["minibatch"] > 20, own_rows  # each trained row knows its group
