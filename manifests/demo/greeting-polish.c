/* The demo's second patch, stacked on the first: it replaces greeting() again and requires
 * greeting-fix, so the console's dependency graph has an edge to show. */
#include <stdio.h>

extern char reply[128];
extern int requests_served;

const char *greeting_polished(const char *name)
{
    snprintf(reply, sizeof reply, "Good day, %s! You are caller %d.", name, requests_served);
    return reply;
}
