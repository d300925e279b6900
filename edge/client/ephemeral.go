package client

func (s *Server) routesEphemeral() {}
