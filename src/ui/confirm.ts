import {RefusedError, UsageError} from '../errors/errors.js'

/**
 * Destructive commands confirm on a terminal; scripts pass --yes. Without a terminal and
 * without --yes the command refuses rather than guess. `json`: under --json there is no one
 * to ask, and --json is about the output, not consent: it never stands for --yes (exit 2).
 */
export async function confirm(question: string, yes: boolean, json = false): Promise<void> {
  if (yes) return
  if (json) throw new UsageError(`${question.replace(/\?.*$/, '')}: --json needs --yes (under --json there is no prompt, and consent is never assumed)`, 'add --yes to confirm')
  if (!process.stdin.isTTY || !process.stderr.isTTY)
    throw new RefusedError(`${question.replace(/\?$/, '')}: refused without confirmation (no terminal to ask on)`, 'pass --yes to confirm in a script')
  // Loaded only to ask: every command imports this module, few ever prompt.
  const {createInterface} = await import('node:readline/promises')
  const rl = createInterface({input: process.stdin, output: process.stderr})
  try {
    const answer = (await rl.question(`${question} [y/N] `)).trim().toLowerCase()
    if (answer !== 'y' && answer !== 'yes') throw new RefusedError('not confirmed; nothing was changed')
  } finally {
    rl.close()
  }
}
