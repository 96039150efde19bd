# bash completion for clipc (make install puts it in PREFIX/share/bash-completion/completions/clipc).
# Commands come from `clipc --help`, a command's flags from `clipc COMMAND --help`, so the
# completion follows the binary it completes; anything else completes as a file name.
_clipc() {
    local cur=${COMP_WORDS[COMP_CWORD]} words
    if [ "$COMP_CWORD" -eq 1 ]; then
        words=$(clipc --help 2>/dev/null | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p; s/^  \([a-z][a-z-]*\)$/\1/p')
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    if [[ "$cur" == -* ]]; then
        words=$(clipc "${COMP_WORDS[1]}" --help 2>/dev/null | grep -o -- '--[a-z0-9][a-z0-9-]*' | sort -u)
        COMPREPLY=($(compgen -W "$words -m --help --precision" -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F _clipc clipc
