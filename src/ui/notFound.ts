import type {Hook} from '@oclif/core'
import {ExitCode, UsageError} from '../errors/errors.js'
import type {ErrorResult} from './results/results.js'
import {colour} from './terminal.js'

/**
 * oclif's command_not_found hook: a mistyped command is a bad command line, exit 2 (README
 * "Exit codes"), with the nearest command named, on a terminal or piped alike. It replaces
 * @oclif/plugin-not-found, which exits 127 (a shell's "command not found") and names the
 * nearest command only in an interactive prompt. Under --json (before or after the mistyped
 * word) stdout carries the error object every command prints under --json.
 */
export const notFoundHook: Hook<'command_not_found'> = async function (opts) {
  const ids = opts.config.commands.filter((c) => !c.hidden).map((c) => c.id)
  const r = notFound(opts.id, opts.argv ?? [], ids)
  if ('run' in r) return opts.config.runCommand(r.run.id, r.run.argv)
  if (r.json) process.stdout.write(`${JSON.stringify(r.error, null, 2)}\n`)
  else {
    process.stderr.write(`${colour.error('Error:')} ${r.error.error.message}\n`)
    process.stderr.write(`  ${r.error.error.fix}\n`)
  }
  this.exit(ExitCode.usage)
}

/**
 * What to do with a command line whose command oclif did not find: the usage error to print
 * (and whether --json asked for it on stdout), or the command to run after all. oclif takes
 * the first word as the id even when it is a flag: `clonectl --json stauts` has id "--json",
 * and `clonectl --json status` is the status command with its flags first. Pure.
 */
export function notFound(id: string, argv: string[], ids: string[]): {run: {id: string; argv: string[]}} | {json: boolean; error: ErrorResult} {
  const words = [id, ...argv]
  const end = words.indexOf('--')
  const json = (end === -1 ? words : words.slice(0, end)).includes('--json')
  // Flags before the command (a global one's value included), then its words up to the next flag, as oclif reads an id.
  let i = 0
  const leading: string[] = []
  while (i < words.length && words[i]!.startsWith('-') && words[i] !== '--') {
    leading.push(words[i]!)
    if (words[i] === '--state-dir' && i + 1 < words.length) leading.push(words[++i]!)
    i++
  }
  let j = i
  while (j < words.length && !words[j]!.startsWith('-')) j++
  const cmdWords = words.slice(i, j)
  if (leading.length > 0) {
    for (let n = cmdWords.length; n > 0; n--) {
      const candidate = cmdWords.slice(0, n).join(':')
      if (ids.includes(candidate)) return {run: {id: candidate, argv: [...leading, ...words.slice(i + n)]}}
    }
  }
  const typedId = cmdWords.join(':')
  let message: string
  let fix: string
  if (typedId === '') {
    message = 'no clonectl command given'
    fix = 'run `clonectl help` for the list of commands'
  } else {
    // With spaces between topic and command, oclif's id runs on into the arguments
    // (`clone ad x` is "clone:ad:x"): name only as many words as the nearest command has.
    const nearest = closest(typedId, ids)
    const typed = typedId
      .split(':')
      .slice(0, nearest ? nearest.split(':').length : undefined)
      .join(' ')
    message = `${typed} is not a clonectl command`
    fix = `${nearest ? `did you mean \`clonectl ${nearest.split(':').join(' ')}\`? ` : ''}run \`clonectl help\` for the list of commands`
  }
  return {json, error: {status: ExitCode.usage, error: {code: 'USAGE', name: UsageError.name, message, fix}}}
}

/** The id nearest to `id` (its first words, as many as the id's) by edit distance, or undefined when none is close. Pure. */
export function closest(id: string, ids: string[]): string | undefined {
  let best: string | undefined
  let bestD = Number.POSITIVE_INFINITY
  const words = id.split(':')
  for (const c of ids) {
    const d = editDistance(words.slice(0, c.split(':').length).join(':'), c)
    if (d < bestD) {
      best = c
      bestD = d
    }
  }
  // Half the word or more changed is no longer a typo of it.
  return best !== undefined && bestD <= Math.max(2, Math.floor(best.length / 2)) ? best : undefined
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({length: b.length + 1}, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    prev = cur
  }
  return prev[b.length]!
}
