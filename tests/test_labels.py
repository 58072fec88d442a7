"""Labels: artist/genre ids (v2, v3), the lyric tokenizer (data.py) and the lyric window (prior.py)."""
import warnings

import pytest

import data
import toy
import prior
from prior import lyric_window


def test_official_cross_check_values():
    """The HF port's slow 1b_lyrics test: "Zac Brown Band" / "Country" / " and " give 7169, 507, 76 27 40 30 76."""
    assert data.artist_id("Zac Brown Band", 3) == 7169
    assert data.genre_ids("Country", 3) == [507]
    assert data.tokenize_lyrics(" and ", 3) == [76, 27, 40, 30, 76]


def test_table_sizes_and_vocabularies():
    assert len(data.load_ids("artist", 2)) == 4111 and max(data.load_ids("artist", 2).values()) == 4108
    assert len(data.load_ids("genre", 2)) == 120 and len(data.load_ids("genre", 3)) == 604
    assert data.lyric_vocab_size(2) == 80 and data.lyric_vocab_size(3) == 79
    assert data.tokenize_lyrics(" +", 2) == [77, 70] and data.tokenize_lyrics(" +", 3) == [76]  # v3 has no '+'


def test_v2_normalisation_and_bag_of_genres():
    assert data.normalize_name("  Zac Brown-Band!! ", 2) == "zac_brown_band"
    assert data.artist_id("Zac Brown Band", 2) == 1069
    assert data.genre_ids("Country Rock", 2) == [11, 8, -1, -1, -1]  # a bag of words, padded with -1
    assert data.genre_ids("R&B", 2) == [17, 18, -1, -1, -1]
    assert data.genre_ids("country rock", 3) == [546]  # v3: one name, lowercase only
    with pytest.warns(UserWarning, match="more than 5 words"):
        assert data.genre_ids("hard rock pop soul jazz blues", 2) == [7, 8, 14, 6, 9]


def test_unknown_names_map_to_zero_and_suggest_close_ones():
    with pytest.warns(UserWarning, match="zac brown band"):
        assert data.artist_id("Zac Brown Bnd", 3) == 0
    with pytest.warns(UserWarning, match="country"):
        assert data.genre_ids("kountry", 3) == [0]
    with pytest.warns(UserWarning, match="polka"):
        assert data.genre_ids("rock polka", 2) == [8, 0, -1, -1, -1]  # only the unknown word becomes 0
    assert data.closest_names("alan jakson", "artist", 3)[0] == "alan jackson"


def test_song_labels_and_bad_versions():
    assert data.song_labels("Zac Brown Band", "Country", " and ", 3) == (7169, [507], [76, 27, 40, 30, 76])
    with pytest.raises(ValueError, match="version"):
        data.artist_id("Zac Brown Band", "v3")


def test_known_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.artist_id("Alan Jackson", 2), data.artist_id("alan jackson", 3), data.genre_ids("pop", 3)
        for genre in toy.TOY_GENRES:  # the toy songs' genres exist in both tables
            data.genre_ids(genre, 2), data.genre_ids(genre, 3)


def test_lyrics_cleaning_to_ascii():
    text = "Café — naïve “quote”\\Straße\tüber ok+ 日本"  # unidecode would spell 日本; we drop it
    assert data.clean_lyrics(text, 2) == 'Cafe - naive "quote"\nStrasse\tuber ok+ '
    assert data.clean_lyrics(text, 3) == 'Cafe - naive "quote"\nStrasse\tuber ok '
    tokens = data.tokenize_lyrics(text, 3)
    assert data.detokenize_lyrics(tokens, 3) == data.clean_lyrics(text, 3)
    assert data.detokenize_lyrics([0, 0] + tokens, 3) == data.clean_lyrics(text, 3)  # padding is nothing


def test_lyric_window_start_middle_end():
    tokens = list(range(1, 101))  # 100 characters spread over a song of 1000 samples; windows of 10 tokens
    window, indices = lyric_window(tokens, 10, total_length=1000, offset=0, duration=100)
    assert indices == list(range(0, 10)) and window == tokens[0:10]  # start: clamped to the first characters
    window, indices = lyric_window(tokens, 10, total_length=1000, offset=450, duration=100)
    assert indices == list(range(45, 55)) and window == tokens[45:55]  # middle: centred on character 50
    window, indices = lyric_window(tokens, 10, total_length=1000, offset=900, duration=100)
    assert indices == list(range(90, 100)) and window == tokens[90:100]  # end: clamped to the last characters
    window, indices = lyric_window(tokens, 10, total_length=1000, offset=300, duration=100)
    assert indices[0] == 30  # centre int(100 * 350 / 1000) = 35


def test_lyric_window_pads_short_lyrics_on_the_left():
    window, indices = lyric_window([5, 6, 7], 6, total_length=1000, offset=500, duration=100)
    assert window == [0, 0, 0, 5, 6, 7] and indices == [-1, -1, -1, 0, 1, 2]
    with pytest.raises(ValueError, match="offset"):
        lyric_window(list(range(20)), 6, total_length=1000, offset=1000, duration=100)


OZYMANDIAS = """I met a traveller from an antique land,
    Who said "Two vast and trunkless legs of stone
    Stand in the desert. . . . Near them, on the sand,
    Half sunk a shattered visage lies, whose frown,
    And wrinkled lip, and sneer of cold command,
    Tell that its sculptor well those passions read
    Which yet survive, stamped on these lifeless things,
    The hand that mocked them, and the heart that fed;
    And on the pedestal, these words appear:
    My name is Ozymandias, King of Kings;
    Look on my Works, ye Mighty, and despair!
    Nothing beside remains. Round the decay
    Of that colossal Wreck, boundless and bare
    The lone and level sands stretch far away
    """  # Shelley, 1818 (public domain), indented as in the HF test's metadata


def test_hf_expected_y_cond_end_to_end():
    """HF's 1b_lyrics test feeds this poem, "Zac Brown Band", "Country", a 1058304-sample song and the
    first 786432-sample window, and gets y[:10] = [1058304, 0, 786432, 7169, 507, 76, 27, 40, 30, 76]."""
    artist, genres, tokens = data.song_labels("Zac Brown Band", "Country", OZYMANDIAS, 3)
    window, indices = lyric_window(tokens, 384, total_length=1058304, offset=0, duration=786432)
    y = [1058304, 0, 786432, artist, *genres, *window]
    assert y[:10] == [1058304, 0, 786432, 7169, 507, 76, 27, 40, 30, 76] and len(y) == 389
    assert data.detokenize_lyrics(window, 3).startswith(" and trunkless legs of stone")
    y_cond = prior.window_y(prior.preset("1b_lyrics"), artist, genres, 1058304, 0, tokens)  # the one y builder
    assert y_cond.tolist() == y


def test_lyric_window_of_the_released_1b_lyrics_shape():
    """384 tokens over a 1b_lyrics window of 786432 samples in a 1058304-sample song (the HF test's example)."""
    tokens = data.tokenize_lyrics(" and " * 200, 3)  # 1000 characters
    window, indices = lyric_window(tokens, 384, total_length=1058304, offset=0, duration=786432)
    assert len(window) == 384 and indices[0] == 179  # centre int(1000 * 393216 / 1058304) = 371, minus 192
    assert window[:5] == [76, 76, 27, 40, 30] and window == tokens[179:563]
