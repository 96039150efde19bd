/* The search page (page.html), linked into the library so `clipc serve`
 * needs no files besides the index. */
    .section .rodata
    .global clipc_page_html
    .global clipc_page_html_end
    .balign 16
clipc_page_html:
    .incbin "src/server/page.html"
clipc_page_html_end:
    .section .note.GNU-stack,"",@progbits
