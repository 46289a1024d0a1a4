import type {Hook} from '@oclif/core'
import {ExitCode} from '../errors/errors.js'
import {colour} from './terminal.js'

/**
 * oclif's command_not_found hook: a mistyped command is a bad command line, exit 2 (README
 * "Exit codes"), with the nearest command named, on a terminal or piped alike. It replaces
 * @oclif/plugin-not-found, which exits 127 (a shell's "command not found") and names the
 * nearest command only in an interactive prompt.
 */
export const notFoundHook: Hook<'command_not_found'> = async function (opts) {
  const ids = opts.config.commands.filter((c) => !c.hidden).map((c) => c.id)
  // With spaces between topic and command, oclif's id runs on into the arguments
  // (`clone ad x` is "clone:ad:x"): name only as many words as the nearest command has.
  const nearest = closest(opts.id, ids)
  const typed = opts.id
    .split(':')
    .slice(0, nearest ? nearest.split(':').length : undefined)
    .join(' ')
  process.stderr.write(`${colour.error('Error:')} ${typed} is not a clonectl command\n`)
  process.stderr.write(`  ${nearest ? `did you mean \`clonectl ${nearest.split(':').join(' ')}\`? ` : ''}run \`clonectl help\` for the list of commands\n`)
  this.exit(ExitCode.usage)
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
