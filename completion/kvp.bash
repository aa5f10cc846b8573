# bash completion for kvp(1), the Hyper-V KVP pool tool.
# Options and commands follow `kvp --help` / `kvp COMMAND --help`.

_kvp_keys() {
    # Keys of the pools in "$@" (kvp options: --dir/--root/--pool), quietly; nothing on error.
    kvp "$@" list --json 2>/dev/null |
        python3 -c 'import json, sys
try:
    data = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
seen = set()
for r in data.get("records", []) if isinstance(data, dict) else []:
    key = r.get("key") if isinstance(r, dict) else None
    if isinstance(key, str) and key not in seen and "\n" not in key:
        seen.add(key)
        print(key)' 2>/dev/null
}

_kvp() {
    local cur prev words cword
    _init_completion || return

    local commands="list get set delete dump watch wait is-stale clear fsck"
    local common="--dir --root -p --pool --json --null --raw --unsafe --lock-timeout
        -v --verbose -q --quiet -h --help --version"
    local pools="external guest auto auto-external auto-internal 0 1 2 3 4"

    # Find the command, the first positional after it, the options that choose the pools
    # (passed on when listing keys) and where a `watch --exec` command starts.
    local i word command="" positionals=0 exec_at=0 pool_given=""
    local -a where=()
    for ((i = 1; i < cword; i++)); do
        word=${words[i]}
        if [[ -n $command && $command == watch && $word == --exec ]]; then
            exec_at=$((i + 1))
            break
        fi
        case $word in
            --dir | --root | -p | --pool)
                [[ $word == -p || $word == --pool ]] && pool_given=1
                where+=("$word" "${words[i + 1]}")
                ((i++))
                ;;
            --pool=*)
                pool_given=1
                where+=("$word")
                ;;
            --dir=* | --root=*) where+=("$word") ;;
            --lock-timeout | --timeout | --hook-timeout | --value | --chunk-size | -n | --count | --op) ((i++)) ;;
            --) ;;
            -*) ;;
            *)
                if [[ -z $command ]]; then
                    command=$word
                else
                    ((positionals++))
                fi
                ;;
        esac
    done

    if ((exec_at > 0)); then
        _command_offset "$exec_at"
        return
    fi

    case $prev in
        -p | --pool)
            # comma-separated lists: complete the part after the last comma
            local head="" part=$cur
            if [[ $cur == *,* ]]; then
                head=${cur%,*},
                part=${cur##*,}
            fi
            COMPREPLY=($(compgen -P "$head" -W "$pools" -- "$part"))
            return
            ;;
        --dir | --root)
            _filedir -d
            return
            ;;
        --op)
            local head="" part=$cur
            if [[ $cur == *,* ]]; then
                head=${cur%,*},
                part=${cur##*,}
            fi
            COMPREPLY=($(compgen -P "$head" -W "initial add modify delete" -- "$part"))
            return
            ;;
        --lock-timeout | --timeout | --hook-timeout | --value | --chunk-size | -n | --count)
            return
            ;;
    esac

    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$common" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return
    fi

    local opts=$common
    case $command in
        list) opts+=" --events" ;;
        get) opts+=" --join" ;;
        set) opts+=" --chunk --chunk-size" ;;
        delete) opts+=" --chunk" ;;
        watch) opts+=" --op --no-initial --changes-only -n --count --timeout --hook-timeout --exit-on-failure --exec" ;;
        wait) opts+=" --value --timeout" ;;
        clear) opts+=" --if-stale" ;;
        fsck) opts+=" --repair" ;;
    esac

    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi

    case $command in
        dump)
            ((positionals == 0)) && _filedir
            ;;
        fsck)
            _filedir
            ;;
        watch | list)
            local IFS=$'\n'
            COMPREPLY=($(compgen -W "$(_kvp_keys "${where[@]}")" -- "$cur"))
            ;;
        get | delete | wait | set)
            if ((positionals == 0)); then
                if [[ $command == @(set|delete) && -z $pool_given ]]; then
                    where+=(--pool guest) # their default pool
                fi
                local IFS=$'\n'
                COMPREPLY=($(compgen -W "$(_kvp_keys "${where[@]}")" -- "$cur"))
            fi
            ;;
    esac
} && complete -F _kvp kvp
