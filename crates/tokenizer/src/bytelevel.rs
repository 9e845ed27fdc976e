//! GPT-2 byte-level alphabet: every byte maps to one printable Unicode
//! character, so BPE can run on text while being lossless on bytes.

/// Highest code point used by the alphabet is U+0143 (256 + 67).
const TABLE_LEN: usize = 324;

/// True for the bytes that map to themselves (printable Latin-1, not space).
const fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `BYTE_TO_CHAR[b]` is the code point that represents byte `b`.
const BYTE_TO_CHAR: [u32; 256] = {
    let mut out = [0u32; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        if is_direct(b as u8) {
            out[b] = b as u32;
        } else {
            out[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    out
};

/// `CHAR_TO_BYTE[cp]` is `byte + 1` for the code point `cp` (0 = not in the alphabet).
const CHAR_TO_BYTE: [u16; TABLE_LEN] = {
    let mut out = [0u16; TABLE_LEN];
    let mut b = 0usize;
    while b < 256 {
        out[BYTE_TO_CHAR[b] as usize] = b as u16 + 1;
        b += 1;
    }
    out
};

/// The byte represented by `c`, if `c` belongs to the byte-level alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < TABLE_LEN {
        match CHAR_TO_BYTE[cp] {
            0 => None,
            v => u8::try_from(v - 1).ok(),
        }
    } else {
        None
    }
}

/// `BYTE_CHARS[b]` is the character that represents byte `b`.
const BYTE_CHARS: [char; 256] = {
    let mut out = ['\0'; 256];
    let mut b = 0usize;
    while b < 256 {
        out[b] = match char::from_u32(BYTE_TO_CHAR[b]) {
            Some(c) => c,
            None => '\0', // unreachable: all values are below 0x144
        };
        b += 1;
    }
    out
};

/// The character representing byte `b`.
pub(crate) fn byte_to_char(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

/// Appends the byte-level encoding of `text` to `out`.
pub(crate) fn encode_into(text: &str, out: &mut String) {
    out.extend(text.bytes().map(byte_to_char));
}

/// Decodes a byte-level token text to raw bytes. Like the HF `ByteLevel`
/// decoder, a token containing a character outside the alphabet is taken
/// verbatim (its UTF-8 bytes).
pub(crate) fn decode_token(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn decode_falls_back_to_verbatim() {
        let mut v = Vec::new();
        decode_token("ĠhelloĊ", &mut v);
        assert_eq!(v, b" hello\n");
        v.clear();
        decode_token("a b", &mut v);
        assert_eq!(v, b"a b");
    }
}
