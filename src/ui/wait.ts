import {stderrIsLive} from './terminal.js'

/**
 * Show an indeterminate wait (a held lock, a remote being reached, serve draining) on stderr:
 * an ora spinner on a terminal, one plain line otherwise (a log, a pipe), so a waiting
 * command is never silent. `afterMs`: say nothing unless the wait lasts that long (a remote
 * that answers at once needs no notice). Returns the function that ends it.
 */
export function showWait(what: string, opts: {afterMs?: number; out?: NodeJS.WriteStream} = {}): () => void {
  const out = opts.out ?? process.stderr
  let ended = false
  let stop = (): void => {
    ended = true
  }
  const begin = (): void => {
    if (stderrIsLive()) {
      // Loaded on first use, not at every command's start-up (esbuild keeps this import lazy in the bundle).
      void import('ora').then(({default: ora}) => {
        if (ended) return
        const spinner = ora({text: what, stream: out, discardStdin: false}).start()
        stop = () => spinner.stop()
      })
    } else out.write(`clonectl: ${what}…\n`)
  }
  if (!opts.afterMs) {
    begin()
    return () => stop()
  }
  const timer = setTimeout(begin, opts.afterMs)
  timer.unref()
  return () => {
    clearTimeout(timer)
    stop()
  }
}
