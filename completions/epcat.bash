_epcat_completion() {
    local IFS=$'\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD COMP_LINE="${COMP_LINE:0:COMP_POINT}" COMP_WORD="$2" _EPCAT_COMPLETE=bash_complete $1)

    for completion in $response; do
        IFS=',' read -r type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            if [[ $value == *[:=/] ]]; then
                compopt -o nospace
            fi
            printf -v value '%q' "$value"
            COMPREPLY+=("$value")
        fi
    done

    return 0
}

_epcat_completion_setup() {
    complete -o nosort -F _epcat_completion epcat
}

_epcat_completion_setup;
