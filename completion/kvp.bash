# bash completion for kvp(1), the Hyper-V KVP pool tool.

_kvp_keys() {
    # Keys of the chosen pool, quietly; nothing when the pool is unreadable.
    local pool_args=()
    [[ -n $1 ]] && pool_args=(--pool "$1")
    kvp list "${pool_args[@]}" --json 2>/dev/null |
        python3 -c 'import json,sys
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
records = data.get("records", data) if isinstance(data, dict) else data
for r in records if isinstance(records, list) else []:
    if isinstance(r, dict) and "key" in r:
        print(r["key"])' 2>/dev/null
}

_kvp() {
    local cur prev words cword
    _init_completion || return

    local commands="list get set delete dump watch wait is-stale clear fsck"
    local global_opts="--dir --root --json --null -0 --raw --unsafe --help"
    local pools="external guest auto auto-external auto-internal 0 1 2 3 4"

    case $prev in
        --pool)
            COMPREPLY=($(compgen -W "$pools" -- "$cur"))
            return
            ;;
        --dir | --root)
            _filedir -d
            return
            ;;
        --timeout | --value)
            return
            ;;
        --exec)
            COMPREPLY=($(compgen -c -- "$cur"))
            return
            ;;
    esac

    local i command="" pool=""
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --pool) pool=${words[i + 1]} ;;
            --dir | --root | --timeout | --value) ((i++)) ;;
            -*) ;;
            *) [[ -z $command ]] && command=${words[i]} ;;
        esac
    done

    if [[ -z $command ]]; then
        COMPREPLY=($(compgen -W "$commands $global_opts" -- "$cur"))
        return
    fi

    local opts="--pool $global_opts"
    case $command in
        list) opts+=" --events" ;;
        get) opts+=" --join" ;;
        set) opts+=" --chunk" ;;
        watch) opts+=" --exec --timeout" ;;
        wait) opts+=" --value --timeout" ;;
        clear) opts+=" --if-stale" ;;
        fsck) opts+=" --repair" ;;
        dump)
            _filedir
            return
            ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ $command == @(get|delete|wait|watch|set) ]]; then
        COMPREPLY=($(compgen -W "$(_kvp_keys "$pool")" -- "$cur"))
    fi
} && complete -F _kvp kvp
