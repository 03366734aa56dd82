import uWS from 'uWebSockets.js';
const app = uWS.App();
app.put('/*', (res, req) => {
  const cl = req.getHeader('content-length'); let n = 0, calls = 0;
  res.onAborted(() => console.log('aborted'));
  res.onData((ab, last) => { calls++; n += ab.byteLength; if (last) { console.log('cl', cl, 'bytes', n, 'calls', calls); res.cork(() => res.end('ok')); } });
  setTimeout(() => { if (calls === 0) { console.log('no onData for cl', cl); res.cork(() => res.end('none')); } }, 300);
});
app.listen('127.0.0.1', 0, (ls) => {
  const port = uWS.us_socket_local_port(ls);
  console.log('port', port);
  import('node:child_process').then(async ({ exec }) => {
    for (const args of [`-T /dev/null`, `--data-binary @/etc/hostname`, `-H 'Content-Length: 0' -X PUT`]) {
      const t = Date.now();
      const out = await new Promise(r => exec(`head -c 3000000 /dev/zero > /tmp/z3m; curl -s -X PUT ${args} http://127.0.0.1:${port}/x; echo; curl -s -w ' %{time_total}' -T /tmp/z3m http://127.0.0.1:${port}/x`, (e, so) => r(so)));
      console.log(args, '=>', out.replace(/\n/g,' | '));
    }
    process.exit(0);
  });
});
