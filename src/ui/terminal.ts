import chalk from 'chalk'

/** Colour and live redraws only on a terminal, and never with NO_COLOR set. */
export function stderrIsLive(): boolean {
  return Boolean(process.stderr.isTTY) && !process.env.NO_COLOR && process.env.TERM !== 'dumb'
}

export function stdoutIsLive(): boolean {
  return Boolean(process.stdout.isTTY) && !process.env.NO_COLOR && process.env.TERM !== 'dumb'
}

export function configureColour(): void {
  if (!stdoutIsLive() && !stderrIsLive()) chalk.level = 0
}

export const colour = {
  state(state: string): string {
    if (!stdoutIsLive()) return state
    if (state === 'synchronized' || state === 'fractured') return chalk.green(state)
    if (state === 'out-of-sync') return chalk.red(state)
    return chalk.yellow(state)
  },
  warn(text: string): string {
    return stderrIsLive() ? chalk.yellow(text) : text
  },
  error(text: string): string {
    return stderrIsLive() ? chalk.red(text) : text
  },
  dim(text: string): string {
    return stdoutIsLive() ? chalk.dim(text) : text
  },
}
