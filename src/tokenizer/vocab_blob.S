/* The BPE merge list, gzip-compressed, linked into the library so the
 * tokenizer needs no data file at run time. */
    .section .rodata
    .global clipc_bpe_gz
    .global clipc_bpe_gz_end
    .balign 16
clipc_bpe_gz:
    .incbin "data/bpe_simple_vocab_16e6.txt.gz"
clipc_bpe_gz_end:
    .section .note.GNU-stack,"",@progbits
