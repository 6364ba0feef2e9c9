from posttrain.data import cleaning


def test_normalize_unicode_whitespace_and_controls():
    assert cleaning.normalize_text("  ｆｕｌｌ\u00a0width\u200b  text\t\there \r\n\r\n\r\n\nend  ") == \
        "full width text here\n\nend"
    # structure survives
    assert cleaning.normalize_text("a\n- b\n#### 3") == "a\n- b\n#### 3"


def test_pii_scrubbing_finds_emails_phones_and_secrets():
    text = ("Mail jane.doe@example.com or call +1 555-123-4567 / (555) 123-4567. "
            "key sk-abcdefghijklmnopqrstuvwxyz123456 and AKIAABCDEFGHIJKLMNOP, api_key = 'hunter2hunter2'")
    out, n = cleaning.scrub_pii(text)
    assert n == 6
    assert "jane.doe" not in out and "555" not in out and "sk-abc" not in out and "AKIA" not in out
    assert "hunter2" not in out and "api_key = <SECRET>" in out


def test_pii_does_not_touch_arithmetic_or_plain_numbers():
    text = "12 + 7 = 19. In 2024 she sold 1,250 apples for $3.50 each.\n#### 4375"
    assert cleaning.scrub_pii(text) == (text, 0)


def test_decontaminator_catches_long_and_short_overlaps():
    eval_prompts = ["Sam has 14 marbles and finds 9 more on the way home from school today. How many now?",
                    "How do I terminate a Linux screen session?"]
    d = cleaning.Decontaminator(eval_prompts, n=13)
    assert d.contaminated("Context. Sam has 14 marbles and finds 9 more on the way home from school today. Answer!")
    assert d.contaminated("Q: how do I terminate a linux screen session? A: press ctrl-a k")
    assert not d.contaminated("Sam has 15 marbles and finds 9 more on the way home.")
    assert not d.contaminated("How do I terminate a Linux process?")


def test_near_duplicate_filter_with_minhash(tmp_path):
    f = cleaning.NearDuplicateFilter(tmp_path / "near.sqlite", threshold=0.8, num_perm=128, shingle_words=3)
    base = ("Write a short poem about the sea in exactly four lines, with a rhyme on every second line, "
            "mention a lighthouse and a gull, keep the tone calm and hopeful, "
            "and end the last line with the word home.")
    assert not f.seen(base)
    assert f.seen(base.replace("short", "small"))           # one word changed
    assert not f.seen("Explain how photosynthesis works to a ten year old child in simple words.")
    f.close()
    assert not (tmp_path / "near.sqlite").exists()


def test_the_near_duplicate_filter_finds_what_datasketchs_index_finds(tmp_path):
    """The on-disk band table flags exactly the rows datasketch's in-memory MinHashLSH would."""
    from datasketch import MinHashLSH

    f = cleaning.NearDuplicateFilter(tmp_path / "near.sqlite", threshold=0.8, num_perm=128, shingle_words=3)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    words = "the quick brown fox jumps over a lazy dog near river bank under bright moon light".split()
    texts = [" ".join(words[i % 5:] + words[:i % 5]) + f" note {i // 7}" for i in range(60)]
    ours, theirs = [], []
    for i, text in enumerate(texts):
        ours.append(f.seen(text))
        m = f._minhash(text)
        theirs.append(bool(lsh.query(m)))
        if not theirs[-1]:
            lsh.insert(str(i), m)
    assert ours == theirs and any(ours) and not all(ours)


def test_exact_duplicates_on_disk(tmp_path):
    d = cleaning.ExactDuplicates(tmp_path / "exact.sqlite")
    a, b = cleaning.content_hash("a"), cleaning.content_hash("b")
    assert [d.seen(a), d.seen(b), d.seen(a)] == [False, False, True]
    d.close()


def test_blocklist_is_case_insensitive():
    assert cleaning.blocked("Buy CHEAP pills", ["cheap pills"]) == "cheap pills"
    assert cleaning.blocked("fine", ["cheap pills"]) is None
