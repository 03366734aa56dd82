/**
 * The API prefix a client is given (`endpoint`, `updraft upload --url`/UPDRAFT_URL): every request URL is the prefix
 * plus a route, so a prefix with a query string or fragment is refused up front instead of producing requests whose
 * route lands inside the query (each answered 404).
 */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/cli/args.js';
import { parseUploadArgs } from '../../src/cli/upload.js';
import { upload } from '../../src/client/index.js';
import { thrown } from '../fixtures/thrown.js';


describe('API prefix URLs', () => {
  it('the client refuses an endpoint with a query string or fragment, and takes a plain one', () => {
    const file = new Blob([new Uint8Array(4)]);
    // A bare '?' or '#' too: URL's search and hash are empty for them, but href keeps them.
    for (const endpoint of ['http://127.0.0.1:9/api/v1/files?tenant=a', 'http://127.0.0.1:9/api/v1/files#x', 'http://127.0.0.1:9/api/v1/files?', 'http://127.0.0.1:9/api/v1/files#']) {
      const e = thrown(() => upload(file, { endpoint, fileName: 'a.bin' }));
      expect(e, endpoint).toBeInstanceOf(TypeError);
      expect(e.message).toBe('endpoint must be the API prefix alone, without a query string or fragment: http://127.0.0.1:9/api/v1/files');
    }
  });

  it('updraft upload refuses such a URL, named by where it came from', () => {
    const e = thrown(() => parseUploadArgs(['a.bin', '--url', 'http://127.0.0.1:9/api/v1/files?x=1'], {}));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe('--url: expected the API prefix alone, without a query string or fragment');
    expect(thrown(() => parseUploadArgs(['a.bin', '--url', 'http://127.0.0.1:9/api/v1/files?'], {}))).toBeInstanceOf(UsageError);
    expect(thrown(() => parseUploadArgs(['a.bin'], { UPDRAFT_URL: 'http://127.0.0.1:9/#top' })).message).toBe(
      'UPDRAFT_URL: expected the API prefix alone, without a query string or fragment',
    );
    expect(thrown(() => parseUploadArgs(['a.bin'], { UPDRAFT_URL: 'not a url' })).message).toBe('UPDRAFT_URL: not a URL: "not a url" (a URL starts with http:// or https://, e.g. http://127.0.0.1:8080/api/v1/files)');
    const ok = parseUploadArgs(['a.bin'], { UPDRAFT_URL: 'http://127.0.0.1:9' });
    expect(ok === 'help' ? ok : ok.options.endpoint).toBe('http://127.0.0.1:9/api/v1/files');
  });
});
