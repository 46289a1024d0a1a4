import {createInterface} from 'node:readline/promises'
import {RefusedError} from '../errors/errors.js'

/**
 * Destructive commands confirm on a terminal; scripts pass --yes. Without a terminal and
 * without --yes the command refuses rather than guess.
 */
export async function confirm(question: string, yes: boolean): Promise<void> {
  if (yes) return
  if (!process.stdin.isTTY || !process.stderr.isTTY)
    throw new RefusedError(`${question.replace(/\?$/, '')}: refused without confirmation (no terminal to ask on)`, 'pass --yes to confirm in a script')
  const rl = createInterface({input: process.stdin, output: process.stderr})
  try {
    const answer = (await rl.question(`${question} [y/N] `)).trim().toLowerCase()
    if (answer !== 'y' && answer !== 'yes') throw new RefusedError('not confirmed; nothing was changed')
  } finally {
    rl.close()
  }
}
